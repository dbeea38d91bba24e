"""A deleted dataset snapshot takes its folder of label and patch arrays with it."""

from __future__ import annotations

import shutil

from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver

from .models import Dataset


@receiver(post_delete, sender=Dataset, dispatch_uid="dataset-folder-removed")
def remove_dataset_folder(sender, instance: Dataset, **kwargs) -> None:
    """Remove the snapshot's folder once the deletion commits (a rolled-back delete keeps it)."""
    folder = instance.folder  # computed now: Django clears the pk after the signals
    transaction.on_commit(lambda: shutil.rmtree(folder, ignore_errors=True))
