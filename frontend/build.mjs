// Build the browser bundle into static/dist/ (served by Django's staticfiles / WhiteNoise):
//   dist/viewer.js, dist/main.js   esbuild bundles of src/*.js (ES modules, minified, sourcemaps);
//                                  viewer.js pulls in the annotation tools (src/annotations.js,
//                                  src/annotate-*.js, polygon-clipping)
//   dist/app.css, dist/viewer.css, dist/annotations.css   every src/*.css, minified, with sourcemaps
//   dist/osd-images/*.png          OpenSeadragon's button images (prefixUrl of the viewer)
// `node build.mjs --watch` rebuilds on change.
import { copyFile, mkdir, readdir, rm } from "node:fs/promises";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const src = join(here, "src");
const outdir = join(here, "static", "dist");
const osdImages = join(here, "node_modules", "openseadragon", "build", "openseadragon", "images");
const watch = process.argv.includes("--watch");

const JS_ENTRIES = ["viewer.js", "main.js", "review.js"];

async function sources(suffix, names = null) {
  const files = names ?? (await readdir(src)).filter((name) => name.endsWith(suffix)).sort();
  return files.filter((name) => existsSync(join(src, name))).map((name) => join(src, name));
}

async function copyOsdImages() {
  if (!existsSync(osdImages)) {
    throw new Error(`${osdImages} is missing: run \`npm install\` in frontend/ first`);
  }
  const target = join(outdir, "osd-images");
  await mkdir(target, { recursive: true });
  const images = (await readdir(osdImages)).filter((name) => name.endsWith(".png"));
  await Promise.all(images.map((name) => copyFile(join(osdImages, name), join(target, name))));
  return images.length;
}

const common = {
  outdir,
  bundle: true,
  minify: true,
  sourcemap: true,
  logLevel: "info",
  legalComments: "linked",
};

const jsOptions = {
  ...common,
  entryPoints: await sources(".js", JS_ENTRIES),
  format: "esm",
  target: ["es2020", "chrome100", "firefox100", "safari15"],
  platform: "browser",
  define: { "process.env.NODE_ENV": '"production"' },
};

const cssOptions = {
  ...common,
  entryPoints: await sources(".css"),
  target: ["chrome100", "firefox100", "safari15"],
  loader: { ".png": "file", ".svg": "file", ".woff2": "file" },
};

await rm(outdir, { recursive: true, force: true });
await mkdir(outdir, { recursive: true });
const imageCount = await copyOsdImages();

if (watch) {
  const contexts = await Promise.all([esbuild.context(jsOptions), esbuild.context(cssOptions)]);
  await Promise.all(contexts.map((ctx) => ctx.watch()));
  console.log(`watching ${src} (copied ${imageCount} OpenSeadragon images); Ctrl-C to stop`);
} else {
  await Promise.all([esbuild.build(jsOptions), esbuild.build(cssOptions)]);
  console.log(`built ${outdir} (+ ${imageCount} OpenSeadragon images in osd-images/)`);
}
