"""Metrics, one module each; importing this package registers them all in ``METRICS``."""

from eval.metrics import clip_score, erasure, fid  # noqa: F401  (registration)
from eval.metrics.base import METRICS, EvalContext, ModelImages, register_metric, value

__all__ = ["METRICS", "EvalContext", "ModelImages", "register_metric", "value"]
