"""`manage.py load_demo`: demo users, generated cases and the real CMU-1 slide (idempotent)."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from slides.demo import load_demo


class Command(BaseCommand):
    help = "Create demo users and load demo cases (generated slides, plus ../shared/data when present)."

    def add_arguments(self, parser):
        parser.add_argument("--size", type=int, default=6000, help="generated slide side in px")

    def handle(self, *args, size: int, **options):
        result = load_demo(size=size, progress=lambda msg: self.stdout.write(msg))
        new = len(result.report.imported)
        again = sum("already imported" in why for _r, _f, why in result.report.failed)
        for _row, file, why in result.report.failed:
            if "already imported" not in why:
                self.stderr.write(f"FAILED {file}: {why}")
        self.stdout.write(f"demo slides: {new} imported now, {again} already there")
        from studies.demo import ensure_demo_study

        study = ensure_demo_study(result.lab)
        if study is not None:
            self.stdout.write(
                f"reader study {study.pk} ({study.name}): the pathologist reads it at"
                f" /studies/{study.pk}/read/, the lab lead manages it at /studies/{study.pk}/"
            )
        from django.contrib.auth import get_user_model

        from inference.demo import ensure_demo_model

        users = get_user_model().objects.in_bulk(["pathologist", "admin"], field_name="username")
        ensure_demo_model(
            lab=result.lab,
            pathologist=users["pathologist"],
            admin=users["admin"],
            progress=lambda msg: self.stdout.write(msg),
        )
        from review.demo import DEMO_REVIEWED_CASE, ensure_demo_decisions

        decided = ensure_demo_decisions(lab=result.lab, pathologist=users["pathologist"])
        if decided:
            self.stdout.write(f"demo review: {decided} nodes of {DEMO_REVIEWED_CASE} confirmed")
        self.stdout.write("demo logins (username / password / role):")
        for username, password, role in result.users:
            self.stdout.write(f"  {username} / {password} / {role}")
