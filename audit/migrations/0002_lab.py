"""Audit events get the lab of their object, so each lab's admins read only their lab's events.

Existing events are filed under the lab of their object where the object still exists and leads
to a lab (the paths of `slides.access.LAB_PATHS` as they stood when this migration was written);
the rest keep no lab and are shown to superusers only."""

import django.db.models.deletion
from django.db import migrations, models

#: object_type -> path to the lab, frozen here (the live table may change later).
LAB_PATHS = {
    "slides.lab": "",
    "slides.case": "lab",
    "slides.node": "case__lab",
    "slides.slide": "node__case__lab",
    "annotations.annotation": "slide__node__case__lab",
    "annotations.annotationimport": "slide__node__case__lab",
    "review.reviewdecision": "node__case__lab",
    "review.reviewercorrection": "node__case__lab",
    "review.reviewsettings": "lab",
    "inference.gradcam": "slide__node__case__lab",
    "studies.readerstudy": "lab",
    "studies.readeranswer": "study__lab",
}


def file_under_labs(apps, schema_editor):
    from django.core.exceptions import FieldError

    event_model = apps.get_model("audit", "AuditEvent")
    for object_type, path in LAB_PATHS.items():
        app_label, model_name = object_type.split(".")
        try:
            model = apps.get_model(app_label, model_name)
        except LookupError:
            continue
        events = event_model.objects.filter(object_type=object_type, lab__isnull=True)
        object_ids = {int(i) for i in events.values_list("object_id", flat=True) if i.isdigit()}
        if not object_ids:
            continue
        try:
            pairs = model.objects.filter(pk__in=object_ids).values_list("pk", path or "pk")
            lab_of = dict(pairs)
        except FieldError:
            continue
        by_lab: dict[int, list[str]] = {}
        for pk, lab_id in lab_of.items():
            if lab_id is not None:
                by_lab.setdefault(lab_id, []).append(str(pk))
        for lab_id, ids in by_lab.items():
            # the log's own queryset refuses update(): this one-off filing goes around it
            models.QuerySet.update(events.filter(object_id__in=ids), lab_id=lab_id)


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0001_initial"),
        ("slides", "0004_slide_modality_window"),
    ]

    operations = [
        migrations.AddField(
            model_name="auditevent",
            name="lab",
            field=models.ForeignKey(
                blank=True,
                help_text="The lab of the object (none: log-ins, users, platform actions)",
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to="slides.lab",
            ),
        ),
        migrations.RunPython(file_under_labs, migrations.RunPython.noop),
    ]
