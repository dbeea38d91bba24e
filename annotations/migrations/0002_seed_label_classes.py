"""Seed the label classes of the design: tumour, non-tumour, hard negatives and exclusions.

Shortcuts are digits so they never collide with the viewer's and the review queue's letter keys.
"""

from __future__ import annotations

from django.db import migrations

# key, name, colour, kind, shortcut, order
LABEL_CLASSES = [
    ("tumour", "Tumour", "#e53935", "tumour", "1", 10),
    ("non-tumour", "Non-tumour", "#43a047", "non-tumour", "2", 20),
    ("lymphoid-follicle", "Lymphoid follicle", "#8e24aa", "hard-negative", "3", 30),
    ("sinus", "Sinus", "#1e88e5", "hard-negative", "4", 40),
    ("histiocytes", "Histiocytes", "#00897b", "hard-negative", "5", 50),
    ("capsule", "Capsule", "#6d4c41", "hard-negative", "6", 60),
    ("necrosis", "Necrosis", "#fbc02d", "hard-negative", "7", 70),
    ("stroma", "Stroma", "#f48fb1", "hard-negative", "8", 80),
    ("artefact", "Artefact", "#757575", "exclude", "9", 90),
    ("ink", "Ink", "#212121", "exclude", "0", 100),
    ("out-of-focus", "Out of focus", "#b0bec5", "exclude", "", 110),
]


def seed(apps, schema_editor):
    LabelClass = apps.get_model("annotations", "LabelClass")
    for key, name, colour, kind, shortcut, order in LABEL_CLASSES:
        LabelClass.objects.update_or_create(
            key=key,
            defaults={
                "name": name,
                "colour": colour,
                "kind": kind,
                "shortcut": shortcut,
                "order": order,
            },
        )


def unseed(apps, schema_editor):
    LabelClass = apps.get_model("annotations", "LabelClass")
    LabelClass.objects.filter(
        key__in=[row[0] for row in LABEL_CLASSES], annotations__isnull=True
    ).delete()


class Migration(migrations.Migration):
    dependencies = [("annotations", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]
