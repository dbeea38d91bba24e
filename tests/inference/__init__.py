"""Models, datasets, augmentation, metrics and training of the inference app (no database)."""
