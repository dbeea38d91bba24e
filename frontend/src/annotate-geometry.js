/**
 * Geometry for the annotation tools, all in level-0 slide pixels: GeoJSON Polygon/MultiPolygon
 * helpers (area, bounds, hit testing), Douglas–Peucker simplification for drawing zoomed out,
 * and the brush: a stroke buffered into a polygon and unioned into / subtracted from a region
 * with `polygon-clipping` (Martinez–Rueda–Feito sweep line; robust predicates).
 *
 * Rings are arrays of [x, y]; GeoJSON rings are closed (first vertex repeated at the end), the
 * working rings of the editor are open (no repeat). `polys(geometry)` always gives open rings as
 * `[[outer, ...holes], ...]`.
 */
import polygonClipping from "polygon-clipping";

// ---- GeoJSON <-> open rings -------------------------------------------------------------------

/** Drop the closing repeat of a ring's first vertex, if there is one. */
export function openRing(ring) {
  const n = ring.length;
  if (n > 1 && ring[0][0] === ring[n - 1][0] && ring[0][1] === ring[n - 1][1]) return ring.slice(0, n - 1);
  return ring.slice();
}

/** Repeat the first vertex at the end (GeoJSON's closed rings). */
export function closeRing(ring) {
  const open = openRing(ring);
  return open.length ? [...open, [open[0][0], open[0][1]]] : open;
}

/** `[[outerRing, ...holes], ...]` with open rings, for a Polygon or MultiPolygon. */
export function polys(geometry) {
  if (!geometry || !geometry.coordinates) return [];
  const list = geometry.type === "MultiPolygon" ? geometry.coordinates : [geometry.coordinates];
  return list.map((rings) => rings.map(openRing));
}

/** GeoJSON from `[[outer, ...holes], ...]` (open or closed rings): Polygon when there is one part. */
export function toGeoJSON(parts) {
  const closed = parts.filter((rings) => rings.length && rings[0].length >= 3).map((rings) => rings.map(closeRing));
  if (closed.length === 1) return { type: "Polygon", coordinates: closed[0] };
  return { type: "MultiPolygon", coordinates: closed };
}

/** A Polygon from one open ring of [x, y] vertices. */
export function polygonFromRing(ring) {
  return { type: "Polygon", coordinates: [closeRing(ring)] };
}

/** Round coordinates to 1/100 px: smaller requests, and level-0 pixels need no more. */
export function roundGeometry(geometry) {
  const r = (v) => Math.round(v * 100) / 100;
  return toGeoJSON(polys(geometry).map((rings) => rings.map((ring) => dedupe(ring.map(([x, y]) => [r(x), r(y)])))));
}

/** Drop consecutive duplicate vertices (and a last one equal to the first) from an open ring. */
export function dedupe(ring) {
  const out = [];
  for (const p of ring) {
    const q = out[out.length - 1];
    if (!q || q[0] !== p[0] || q[1] !== p[1]) out.push(p);
  }
  while (out.length > 1 && out[0][0] === out[out.length - 1][0] && out[0][1] === out[out.length - 1][1]) out.pop();
  return out;
}

// ---- measures ---------------------------------------------------------------------------------

/** Signed shoelace area of an open or closed ring (positive when counter-clockwise in y-up). */
export function ringSignedArea(ring) {
  let sum = 0;
  const n = ring.length;
  for (let i = 0, j = n - 1; i < n; j = i++) sum += (ring[j][0] - ring[i][0]) * (ring[j][1] + ring[i][1]);
  return sum / 2;
}

/** Area in px²: outer rings minus holes. */
export function geometryArea(geometry) {
  let area = 0;
  for (const rings of polys(geometry)) {
    rings.forEach((ring, i) => {
      const a = Math.abs(ringSignedArea(ring));
      area += i === 0 ? a : -a;
    });
  }
  return Math.max(0, area);
}

/** Area in mm² from px² and µm per pixel (null when the scale is unknown). */
export function areaMm2(areaPx, mpp) {
  if (!mpp) return null;
  return (areaPx * mpp * mpp) / 1e6;
}

/** "0.0050 mm²", "1.23 mm²", "12.3 mm²": enough digits to read a small focus. */
export function formatArea(mm2) {
  if (mm2 === null || mm2 === undefined || !Number.isFinite(mm2)) return "—";
  if (mm2 === 0) return "0 mm²";
  if (mm2 < 0.001) return `${mm2.toExponential(2)} mm²`;
  if (mm2 < 0.1) return `${mm2.toFixed(4)} mm²`;
  if (mm2 < 10) return `${mm2.toFixed(3)} mm²`;
  return `${mm2.toFixed(2)} mm²`;
}

/** [minX, minY, maxX, maxY] of a geometry or of a list of points. */
export function bounds(geometryOrPoints) {
  let minX = Infinity;
  let minY = Infinity;
  let maxX = -Infinity;
  let maxY = -Infinity;
  const visit = (p) => {
    if (p[0] < minX) minX = p[0];
    if (p[1] < minY) minY = p[1];
    if (p[0] > maxX) maxX = p[0];
    if (p[1] > maxY) maxY = p[1];
  };
  if (Array.isArray(geometryOrPoints)) geometryOrPoints.forEach(visit);
  else for (const rings of polys(geometryOrPoints)) for (const p of rings[0] || []) visit(p);
  return [minX, minY, maxX, maxY];
}

export function boxesIntersect(a, b) {
  return a[0] <= b[2] && a[2] >= b[0] && a[1] <= b[3] && a[3] >= b[1];
}

export function boxContains(outer, inner) {
  return inner[0] >= outer[0] && inner[1] >= outer[1] && inner[2] <= outer[2] && inner[3] <= outer[3];
}

export function vertexCount(geometry) {
  let n = 0;
  for (const rings of polys(geometry)) for (const ring of rings) n += ring.length;
  return n;
}

// ---- hit testing ------------------------------------------------------------------------------

/** Even–odd point-in-ring test. */
export function pointInRing(x, y, ring) {
  let inside = false;
  for (let i = 0, j = ring.length - 1; i < ring.length; j = i++) {
    const [xi, yi] = ring[i];
    const [xj, yj] = ring[j];
    if (yi > y !== yj > y && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}

/** Inside an outer ring and outside its holes, in any part (`parts` as from `polys`). */
export function pointInParts(x, y, parts) {
  for (const rings of parts) {
    if (!rings.length || !pointInRing(x, y, rings[0])) continue;
    if (!rings.slice(1).some((hole) => pointInRing(x, y, hole))) return true;
  }
  return false;
}

export function pointInGeometry(x, y, geometry) {
  return pointInParts(x, y, polys(geometry));
}

/** Squared distance from p to segment ab. */
export function segmentDistance2(p, a, b) {
  const dx = b[0] - a[0];
  const dy = b[1] - a[1];
  const len2 = dx * dx + dy * dy;
  let t = len2 ? ((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / len2 : 0;
  t = Math.max(0, Math.min(1, t));
  const x = a[0] + t * dx - p[0];
  const y = a[1] + t * dy - p[1];
  return x * x + y * y;
}

/** Distance from p to the nearest edge (`parts` as from `polys`). */
export function distanceToParts(p, parts) {
  let best = Infinity;
  for (const rings of parts) {
    for (const ring of rings) {
      for (let i = 0, j = ring.length - 1; i < ring.length; j = i++) {
        const d = segmentDistance2(p, ring[j], ring[i]);
        if (d < best) best = d;
      }
    }
  }
  return Math.sqrt(best);
}

export function distanceToEdges(p, geometry) {
  return distanceToParts(p, polys(geometry));
}

// ---- simplification ---------------------------------------------------------------------------

/** Douglas–Peucker on an open polyline (iterative: freehand outlines can be long). */
export function simplifyLine(points, tolerance) {
  const n = points.length;
  if (n <= 2 || tolerance <= 0) return points.slice();
  const keep = new Uint8Array(n);
  keep[0] = 1;
  keep[n - 1] = 1;
  const tol2 = tolerance * tolerance;
  const stack = [[0, n - 1]];
  while (stack.length) {
    const [first, last] = stack.pop();
    let maxD = 0;
    let index = -1;
    for (let i = first + 1; i < last; i++) {
      const d = segmentDistance2(points[i], points[first], points[last]);
      if (d > maxD) {
        maxD = d;
        index = i;
      }
    }
    if (index > 0 && maxD > tol2) {
      keep[index] = 1;
      stack.push([first, index], [index, last]);
    }
  }
  const out = [];
  for (let i = 0; i < n; i++) if (keep[i]) out.push(points[i]);
  return out;
}

/** Douglas–Peucker on an open ring: split at the vertex farthest from the first one. */
export function simplifyRing(ring, tolerance) {
  const n = ring.length;
  if (n <= 4 || tolerance <= 0) return ring;
  let far = 0;
  let farD = -1;
  for (let i = 1; i < n; i++) {
    const dx = ring[i][0] - ring[0][0];
    const dy = ring[i][1] - ring[0][1];
    const d = dx * dx + dy * dy;
    if (d > farD) {
      farD = d;
      far = i;
    }
  }
  const a = simplifyLine(ring.slice(0, far + 1), tolerance);
  const b = simplifyLine([...ring.slice(far), ring[0]], tolerance);
  return [...a, ...b.slice(1, -1)];
}

/**
 * The geometry simplified for drawing at `tolerance` px (open rings). Rings that collapse below
 * three vertices are dropped; holes smaller than the tolerance vanish, as they would on screen.
 */
export function simplifyParts(parts, tolerance) {
  if (tolerance <= 0) return parts;
  const out = [];
  for (const rings of parts) {
    const simplified = [];
    rings.forEach((ring, i) => {
      const [x0, y0, x1, y1] = bounds(ring);
      if (i > 0 && Math.max(x1 - x0, y1 - y0) < tolerance) return;
      const s = simplifyRing(ring, tolerance);
      if (s.length >= 3) simplified.push(s);
      else if (i === 0) simplified.push(ring.length > 8 ? [ring[0], ring[Math.floor(ring.length / 3)], ring[Math.floor((2 * ring.length) / 3)]] : ring);
    });
    if (simplified.length) out.push(simplified);
  }
  return out;
}

// ---- brush ------------------------------------------------------------------------------------

function circle(cx, cy, r, segments) {
  const ring = [];
  for (let i = 0; i < segments; i++) {
    const t = (2 * Math.PI * i) / segments;
    ring.push([cx + r * Math.cos(t), cy + r * Math.sin(t)]);
  }
  ring.push(ring[0]);
  return [ring];
}

function capsuleSide(a, b, r) {
  const dx = b[0] - a[0];
  const dy = b[1] - a[1];
  const len = Math.hypot(dx, dy);
  if (len === 0) return null;
  const nx = (-dy / len) * r;
  const ny = (dx / len) * r;
  return [[[a[0] + nx, a[1] + ny], [b[0] + nx, b[1] + ny], [b[0] - nx, b[1] - ny], [a[0] - nx, a[1] - ny], [a[0] + nx, a[1] + ny]]];
}

/**
 * A brush stroke (polyline in px) buffered by `radius` px with round joins and caps, as
 * polygon-clipping MultiPolygon coordinates. The stroke is thinned first (vertices closer than a
 * fifth of the radius add nothing visible) so long strokes stay cheap to union.
 */
export function bufferStroke(points, radius, { segments = 20 } = {}) {
  const line = simplifyLine(dedupe(points.map(([x, y]) => [x, y])), radius / 5);
  if (line.length === 0) return [];
  const pieces = line.map(([x, y]) => circle(x, y, radius, segments));
  for (let i = 1; i < line.length; i++) {
    const side = capsuleSide(line[i - 1], line[i], radius);
    if (side) pieces.push(side);
  }
  return pieces.length === 1 ? [pieces[0]] : polygonClipping.union(...pieces);
}

/** polygon-clipping MultiPolygon coordinates of a GeoJSON geometry. */
export function clippingCoords(geometry) {
  return polys(geometry).map((rings) => rings.map(closeRing));
}

/** Clip polygon-clipping coordinates to the slide: 0..width × 0..height. */
export function clipToSlide(coords, width, height) {
  const slide = [[[[0, 0], [width, 0], [width, height], [0, height], [0, 0]]]];
  return polygonClipping.intersection(coords, slide);
}

/**
 * Union (`mode = "add"`) or subtract (`"erase"`) a brush stroke into a geometry; `null`
 * geometry with "add" starts a new region. Returns a GeoJSON geometry, or null when nothing is
 * left. Parts smaller than `minArea` px² (slivers the eraser leaves) are dropped.
 */
export function applyBrush(geometry, stroke, radius, mode, { width, height, minArea = 0 } = {}) {
  let shape = bufferStroke(stroke, radius);
  if (width && height) shape = clipToSlide(shape, width, height);
  let result;
  if (!geometry) result = mode === "add" ? shape : [];
  else if (mode === "add") result = polygonClipping.union(clippingCoords(geometry), shape);
  else result = polygonClipping.difference(clippingCoords(geometry), shape);
  const parts = result
    .map((rings) => rings.map(openRing).filter((ring) => ring.length >= 3))
    .filter((rings) => rings.length && Math.abs(ringSignedArea(rings[0])) > minArea);
  return parts.length ? toGeoJSON(parts) : null;
}
