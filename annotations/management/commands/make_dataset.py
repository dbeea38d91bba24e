"""manage.py make_dataset NAME --slides 1,2,3 [--patch P --mpp M --max-per-class N] [--now].

Patch size and µm/px default to the project type of the slides' cases (`slides.project_types`):
40 px at 1.0 µm/px for lymph nodes, 256 px at 0.5 µm/px for biopsies.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from annotations.datasets import DatasetError, create_snapshot
from annotations.models import Dataset


def _ids(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError as exc:
        raise CommandError(f"--slides takes slide ids separated by commas, not {text!r}") from exc


class Command(BaseCommand):
    help = (
        "Snapshot the patch labels of some slides into a Dataset (split by case) and extract its "
        "patches: on the Celery `default` queue, or here with --now."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--slides", required=True, help="slide ids, e.g. 1,2,3")
        parser.add_argument(
            "--patch",
            type=int,
            default=None,
            help="patch side in px (default: the project type's, 40 for lymph nodes, 256 for "
            "biopsies)",
        )
        parser.add_argument(
            "--mpp",
            type=float,
            default=None,
            help="µm per px of the patches (default: the project type's, 1.0 for lymph nodes, "
            "0.5 for biopsies)",
        )
        parser.add_argument(
            "--stride", type=int, default=None, help="grid stride in px (default: the patch)"
        )
        parser.add_argument("--max-per-class", type=int, default=None, help="cap per fine class")
        parser.add_argument(
            "--balanced", action="store_true", help="as many non-tumour as tumour patches"
        )
        parser.add_argument("--val-fraction", type=float, default=0.3)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--now", action="store_true", help="extract here instead of queueing")

    def handle(self, *args, **opts) -> None:
        from tqdm import tqdm

        try:
            dataset = create_snapshot(
                name=opts["name"],
                slides=_ids(opts["slides"]),
                patch_px=opts["patch"],
                target_mpp=opts["mpp"],
                stride_px=opts["stride"],
                max_per_class=opts["max_per_class"],
                balanced=opts["balanced"],
                val_fraction=opts["val_fraction"],
                seed=opts["seed"],
                enqueue=not opts["now"],
            )
        except DatasetError as exc:
            raise CommandError(str(exc)) from exc
        split = dataset.split
        self.stdout.write(
            f"dataset {dataset.pk} {dataset.name!r}: {dataset.total_patches} patches of "
            f"{dataset.patch_px} px at {dataset.target_mpp} µm/px "
            f"({', '.join(f'{k} {v}' for k, v in dataset.class_counts.items() if v)}); "
            f"training {split['train']['patches']} from cases "
            f"{[c['accession'] for c in split['train']['cases']]}, validation "
            f"{split['val']['patches']} from {[c['accession'] for c in split['val']['cases']]}; "
            f"hash {dataset.content_hash[:16]}"
        )
        if not opts["now"]:
            self.stdout.write("extraction queued on the `default` queue")
            return
        from annotations.extraction import execute_extraction

        with tqdm(
            total=dataset.total_patches, unit="patch", desc="extracting", file=self.stderr._out
        ) as bar:

            def progress(done: int, total: int) -> None:
                bar.update(done - bar.n)

            status = execute_extraction(
                dataset_id=dataset.pk, worker="make_dataset", progress=progress
            )
        dataset.refresh_from_db()
        if status != Dataset.Status.READY:
            raise CommandError(f"extraction {status}: {dataset.status_reason}")
        self.stdout.write(self.style.SUCCESS(f"ready: {dataset.folder}"))
