"""Seed the clinical variables of seed 001 (Xu et al. 2021, BALNMP): admins add more in the admin site."""

from __future__ import annotations

from django.db import migrations

# key, label, kind, allowed values, min, max, integer, unit, order
FIELDS = [
    ("age", "Age", "numeric", [], 18, 110, True, "years", 10),
    ("tumour_size", "Tumour size", "numeric", [], 0.1, 200, False, "mm", 20),
    ("er", "ER", "categorical", ["positive", "negative"], None, None, False, "", 30),
    ("pr", "PR", "categorical", ["positive", "negative"], None, None, False, "", 40),
    ("her2", "HER2", "categorical", ["positive", "negative"], None, None, False, "", 50),
    ("ki67", "Ki-67", "numeric", [], 0, 100, False, "%", 60),
    (
        "histological_type",
        "Histological type",
        "categorical",
        ["invasive ductal", "invasive lobular", "other"],
        None,
        None,
        False,
        "",
        70,
    ),
    ("tumour_foci", "Number of tumour foci", "numeric", [], 1, 50, True, "", 80),
]


def seed(apps, schema_editor):
    ClinicalField = apps.get_model("clinical", "ClinicalField")
    for key, label, kind, allowed, low, high, integer, unit, order in FIELDS:
        ClinicalField.objects.update_or_create(
            key=key,
            defaults={
                "label": label,
                "kind": kind,
                "allowed_values": allowed,
                "min_value": low,
                "max_value": high,
                "integer": integer,
                "unit": unit,
                "order": order,
            },
        )


def unseed(apps, schema_editor):
    apps.get_model("clinical", "ClinicalField").objects.filter(
        key__in=[f[0] for f in FIELDS]
    ).delete()


class Migration(migrations.Migration):
    dependencies = [("clinical", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]
