"""`manage.py build_mosaics`: mosaic lymph nodes of real tissue from labelled PCam-layout patches.

Writes pyramidal JPEG TIFFs (`mosaic-s<seed>-NNN.tiff`), their ground truth beside each
(`.regions.geojson`: truth, every placed patch, tumour deposits with their size) and an import
manifest (`manifest.csv`); see `slides.mosaic`. Then register them with
`manage.py import_slides OUT --lab LAB --create-missing` (real tissue: without --synthetic).
"""

from __future__ import annotations

import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from slides.mosaic import PCAM_CENTRE_PX, PCAM_MPP, build_mosaics


def _sides(text: str) -> list[int]:
    try:
        sides = [int(part) for part in text.replace("x", ",").split(",") if part.strip()]
    except ValueError:
        raise CommandError(f"--blocks {text!r}: give block sides such as 2,3") from None
    if not sides or min(sides) < 1:
        raise CommandError("--blocks needs sides of at least 1")
    return sides


class Command(BaseCommand):
    help = (
        "Build mosaic lymph nodes of real tissue from a PCam-layout folder (0/ non-tumour, "
        "1/ tumour in the centre 32 px): negative nodes of non-tumour patches only, positive ones "
        "with square deposits of tumour patches; TIFFs, ground truth and manifest.csv."
    )

    def add_arguments(self, parser):
        parser.add_argument("--source", type=Path, required=True, help="folder holding 0/ and 1/")
        parser.add_argument("--out", type=Path, required=True, help="folder to write into")
        parser.add_argument("--positive", type=int, default=1, help="nodes with tumour")
        parser.add_argument("--negative", type=int, default=1, help="nodes without tumour")
        parser.add_argument("--grid", type=int, default=20, help="patches across the node")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument(
            "--blocks",
            default="2,3",
            help="deposit block sides in patches, cycled over positive nodes (default 2,3)",
        )
        parser.add_argument(
            "--deposits-per-node", type=int, default=1, help="deposits in each positive node"
        )
        parser.add_argument(
            "--square", action="store_true", help="fill the whole grid (no round outline)"
        )
        parser.add_argument(
            "--no-outline",
            action="store_true",
            help="no stained line around the tissue (the tissue mask then misses pale patches)",
        )
        parser.add_argument("--mpp", type=float, default=PCAM_MPP, help="µm/px of the patches")
        parser.add_argument(
            "--centre-px", type=int, default=PCAM_CENTRE_PX, help="labelled centre square (px)"
        )
        parser.add_argument("--nodes-per-case", type=int, default=4)
        parser.add_argument("--case-prefix", help="case accession prefix (default MOSAIC-S<seed>)")
        parser.add_argument("--quality", type=int, default=90, help="JPEG quality")

    def handle(self, *args, **o):
        if not o["source"].is_dir():
            raise CommandError(f"{o['source']}: not a folder")
        if o["grid"] < 1:
            raise CommandError("--grid must be at least 1")
        start = time.perf_counter()

        def progress(done: int, total: int) -> None:
            if o["verbosity"]:
                self.stderr.write(f"[{done}/{total}] nodes written")

        try:
            build = build_mosaics(
                o["source"],
                o["out"],
                positive=o["positive"],
                negative=o["negative"],
                grid=o["grid"],
                seed=o["seed"],
                deposit_sides=_sides(o["blocks"]),
                deposits_per_node=o["deposits_per_node"],
                round_node=not o["square"],
                outline=not o["no_outline"],
                mpp=o["mpp"],
                centre_px=o["centre_px"],
                nodes_per_case=o["nodes_per_case"],
                case_prefix=o["case_prefix"],
                quality=o["quality"],
                progress=progress,
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        pool = build.pool
        self.stdout.write(
            f"{pool.source}: {pool.count(0)} non-tumour and {pool.count(1)} tumour distinct "
            f"patches ({pool.duplicates} duplicates, {pool.conflicts} conflicting images dropped)"
        )
        for mosaic, row in zip(build.mosaics, build.rows, strict=True):
            deposits = ", ".join(
                f"{d['block'][0]}x{d['block'][1]} ({d['largest_dimension_mm']} mm)"
                for d in mosaic.deposits
            )
            self.stdout.write(
                f"{mosaic.path}: {row['case']} / {row['node']}, {mosaic.truth}, "
                f"{mosaic.width}x{mosaic.height} px, {mosaic.n_patches} patches"
                + (f", deposits {deposits}" if deposits else "")
            )
        self.stdout.write(
            f"{build.manifest_path} ({len(build.mosaics)} nodes, "
            f"{time.perf_counter() - start:.1f} s); import with: manage.py import_slides "
            f"{build.manifest_path.parent} --lab LAB --create-missing"
        )
