"""Runnable experiments on real pixels (``python -m inference.experiments.<name>``)."""
