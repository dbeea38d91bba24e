"""`manage.py import_slides`: register slide files, or a folder with a CSV manifest, with progress."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from slides.ingest import ImportReport, SlideImportError, import_files, import_manifest
from slides.models import Lab, Node


class Command(BaseCommand):
    help = (
        "Import slides. Either a CSV manifest (columns case,node,file[,status,patient,"
        "project_type,modality,window_center,window_width]; or a folder holding manifest.csv), "
        "or files given with --node. Rows with modality ct, ultrasound or image are node images "
        "(PNG, JPEG, TIFF, single-frame DICOM). Formats made of several files (Hamamatsu "
        ".vms/.vmu, MIRAX .mrxs) import only from under NODESCOPE_IMPORT_ROOTS, and only when "
        "every file they name lies inside that root; uploads never accept them."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "paths", nargs="+", type=Path, help="manifest.csv, a folder with one, or slide files"
        )
        parser.add_argument("--node", type=int, help="node id for plain files")
        parser.add_argument("--lab", help="lab code for cases created from a manifest")
        parser.add_argument(
            "--create-missing", action="store_true", help="create unknown cases and nodes"
        )
        parser.add_argument(
            "--synthetic", action="store_true", help="mark slides as generated (not real tissue)"
        )
        parser.add_argument(
            "--modality",
            choices=["ct", "ultrasound", "image"],
            help="with --node: the files are node images of this modality, not whole slides",
        )

    def handle(
        self,
        *args,
        paths: list[Path],
        node: int | None,
        lab: str | None,
        create_missing: bool,
        synthetic: bool,
        verbosity: int,
        modality: str | None = None,
        **options,
    ):
        lab_obj = None
        if lab:
            lab_obj = Lab.objects.filter(code=lab).first()
            if lab_obj is None:
                raise CommandError(f"unknown lab {lab!r}")
        if modality and node is None:
            raise CommandError(
                "--modality is for files given with --node; manifests say it per row"
            )
        if create_missing and lab_obj is None:
            raise CommandError("--create-missing needs --lab")
        bar = tqdm(total=0, unit="slide", disable=verbosity == 0, file=self.stderr._out)

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        if node is not None:
            node_obj = Node.objects.filter(pk=node).first()
            if node_obj is None:
                raise CommandError(f"unknown node {node}")
            report = import_files(node=node_obj, paths=paths, progress=progress, modality=modality)
        else:
            report = ImportReport()
            for path in paths:
                manifest = path / "manifest.csv" if path.is_dir() else path
                if not manifest.exists():
                    raise CommandError(
                        f"{manifest}: no manifest (give --node to import plain files)"
                    )
                try:
                    part = import_manifest(
                        manifest=manifest,
                        lab=lab_obj,
                        create_missing=create_missing,
                        synthetic=synthetic,
                        progress=progress,
                    )
                except SlideImportError as exc:
                    raise CommandError(str(exc)) from exc
                report.imported += part.imported
                report.failed += part.failed
        bar.close()
        for slide in report.imported:
            self.stdout.write(
                f"imported slide {slide.pk}: {slide.name} ({slide.width}x{slide.height}, {slide.source})"
            )
        for row, file, reason in report.failed:
            self.stderr.write(f"FAILED row {row}: {file}: {reason}")
        self.stdout.write(f"{len(report.imported)} imported, {len(report.failed)} failed")
        if report.failed and not report.imported:
            raise CommandError("nothing imported")
