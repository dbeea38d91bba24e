"""Checksums are unique per lab, not across labs (issue 16): a lab may register a file another
lab holds. Slides record the lab they were registered in (filled from their case for existing
rows), and (lab, checksum) is unique."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def fill_lab(apps, schema_editor):
    Slide = apps.get_model("slides", "Slide")
    for slide in Slide.objects.filter(lab__isnull=True).select_related("node__case").iterator():
        slide.lab_id = slide.node.case.lab_id
        slide.save(update_fields=["lab"])


class Migration(migrations.Migration):
    dependencies = [
        ("slides", "0004_slide_modality_window"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="slide",
            name="lab",
            field=models.ForeignKey(
                blank=True,
                editable=False,
                help_text="The lab the file was registered in: a lab registers a file once; "
                "other labs may register the same file",
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to="slides.lab",
            ),
        ),
        migrations.AlterField(
            model_name="slide",
            name="checksum",
            field=models.CharField(
                db_index=True,
                help_text="SHA-256 of the file(s); unique within a lab",
                max_length=64,
            ),
        ),
        migrations.RunPython(fill_lab, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="slide",
            constraint=models.UniqueConstraint(
                fields=("lab", "checksum"), name="slide_checksum_unique_in_lab"
            ),
        ),
    ]
