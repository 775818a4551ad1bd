"""Evaluation: classifiers and metrics over generated images (reads images and records only)."""
