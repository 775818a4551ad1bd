"""Concept erasure for Stable Diffusion models: the training loop, its losses and balancers."""

__version__ = "0.1.0"
