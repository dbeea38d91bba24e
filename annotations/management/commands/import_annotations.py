"""`manage.py import_annotations SLIDE_ID FILE`: import a QuPath, ASAP or DSA annotation file onto a slide."""

from __future__ import annotations

import time
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from annotations.formats import FORMATS, detect_format, get_format
from annotations.geometry import REPAIR_METHODS, InvalidAnnotation
from annotations.services import import_annotations
from slides.models import Slide


class Command(BaseCommand):
    help = (
        "Import an annotation file (QuPath GeoJSON, ASAP XML, DSA JSON) onto a slide: every polygon "
        "or none. --repair make_valid repairs self-intersecting polygons (e.g. CAMELYON16 outlines) "
        "instead of refusing the file."
    )

    def add_arguments(self, parser):
        parser.add_argument("slide_id", type=int)
        parser.add_argument("file", type=Path)
        parser.add_argument(
            "--format", choices=sorted(FORMATS), help="default: guessed from the file"
        )
        parser.add_argument(
            "--repair", choices=REPAIR_METHODS, default="", help="repair invalid polygons"
        )
        parser.add_argument("--user", help="username recorded as author (default: none)")
        parser.add_argument(
            "--default-class", default="", help="label class for polygons without one"
        )

    def handle(
        self,
        *args,
        slide_id: int,
        file: Path,
        repair: str,
        user: str | None,
        default_class: str,
        **options,
    ):
        file_format: str | None = options.get("format")
        slide = Slide.objects.filter(pk=slide_id).first()
        if slide is None:
            raise CommandError(f"unknown slide {slide_id}")
        author = None
        if user:
            author = get_user_model().objects.filter(username=user).first()
            if author is None:
                raise CommandError(f"unknown user {user!r}")
        if not file.is_file():
            raise CommandError(f"{file}: no such file")
        started = time.perf_counter()
        data = file.read_bytes()
        try:
            fmt = get_format(file_format) if file_format else detect_format(file.name, data)
            result = import_annotations(
                slide=slide,
                user=author,
                items=fmt.read(data),
                file_name=file.name,
                format=fmt.name,
                repair=repair,
                default_class=default_class,
            )
        except InvalidAnnotation as exc:
            problems = getattr(exc, "problems", [str(exc)])
            raise CommandError(
                f"{file.name}: nothing imported:\n  " + "\n  ".join(problems)
            ) from exc
        record = result.record
        self.stdout.write(
            f"{file.name}: imported {len(result.annotations)} of {record.polygon_count} polygons "
            f"({record.vertex_count} vertices) onto slide {slide.pk} as {fmt.name} in "
            f"{time.perf_counter() - started:.2f} s; repaired {len(record.repaired)}, dropped {len(record.dropped)}"
        )
        for d in record.dropped:
            self.stdout.write(f"  dropped {d['name']}: {d['reason']}")
