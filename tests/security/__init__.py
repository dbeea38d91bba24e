"""Regression tests that keep the holes an adversarial test found closed (two labs, every role)."""
