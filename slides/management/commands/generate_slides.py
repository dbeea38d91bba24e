"""`manage.py generate_slides OUTDIR`: write synthetic lymph-node slides (never real tissue).

Each slide is a pyramidal JPEG TIFF with its ground truth beside it (`<stem>.masks.npz`,
`<stem>.regions.geojson`); see `slides.synthetic`. Prints the path of every slide written.
"""

from __future__ import annotations

import math
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from slides.synthetic import generate_slide


def negatives(count: int, share: float) -> list[bool]:
    """Which of `count` slides are negative: floor(count * share) of them, spread evenly."""
    return [math.floor((i + 1) * share + 1e-9) > math.floor(i * share + 1e-9) for i in range(count)]


class Command(BaseCommand):
    help = "Generate synthetic lymph-node slides (with and without tumour) and their ground truth."

    def add_arguments(self, parser):
        parser.add_argument("outdir", type=Path, help="folder to write the slides into")
        parser.add_argument("--count", type=int, default=1, help="number of slides (default 1)")
        parser.add_argument("--width", type=int, default=8000, help="level-0 width in px")
        parser.add_argument("--height", type=int, default=8000, help="level-0 height in px")
        parser.add_argument("--mpp", type=float, default=0.5, help="micrometres per pixel")
        parser.add_argument("--seed", type=int, default=0, help="seed of the first slide (then +1)")
        parser.add_argument(
            "--negative-share", type=float, default=0.5, help="share of slides without tumour"
        )
        parser.add_argument("--tile-size", type=int, default=256)
        parser.add_argument("--quality", type=int, default=85, help="JPEG quality")
        parser.add_argument("--mask-downsample", type=int, default=8)
        parser.add_argument("--workers", type=int, default=None, help="threads (default: CPUs)")

    def handle(
        self,
        *args,
        outdir: Path,
        count: int,
        width: int,
        height: int,
        mpp: float,
        seed: int,
        negative_share: float,
        tile_size: int,
        quality: int,
        mask_downsample: int,
        workers: int | None,
        verbosity: int,
        **options,
    ):
        if count < 1:
            raise CommandError("--count must be at least 1")
        if not 0.0 <= negative_share <= 1.0:
            raise CommandError("--negative-share must be between 0 and 1")
        if width < 64 or height < 64 or mpp <= 0:
            raise CommandError("--width and --height must be at least 64, --mpp positive")
        outdir.mkdir(parents=True, exist_ok=True)
        for i, negative in enumerate(negatives(count, negative_share)):
            slide_seed = seed + i
            name = f"synthetic-{slide_seed:05d}-{'negative' if negative else 'tumour'}.tiff"
            bar = tqdm(
                total=0,
                unit="tile",
                desc=f"[{i + 1}/{count}] {name}",
                leave=False,
                disable=verbosity == 0,
                file=self.stderr._out,
            )

            def progress(done: int, total: int, bar=bar) -> None:
                bar.total = total
                bar.n = done
                bar.refresh()

            try:
                slide = generate_slide(
                    outdir / name,
                    width=width,
                    height=height,
                    mpp=mpp,
                    seed=slide_seed,
                    tumour=not negative,
                    tile_size=tile_size,
                    quality=quality,
                    mask_downsample=mask_downsample,
                    progress=progress,
                    workers=workers,
                )
            except ValueError as exc:
                raise CommandError(str(exc)) from exc
            finally:
                bar.close()
            self.stdout.write(str(slide.path))
