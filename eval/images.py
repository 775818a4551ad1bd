"""Read generated images back as tensors for the classifiers and metrics."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def load_images(paths: Sequence[str | Path], size: int | None = None) -> torch.Tensor:
    """RGB image files → (N, 3, H, W) float in [-1, 1]; resized to ``size``×``size`` when given."""
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    return images_to_tensor(images, size)


def images_to_tensor(images: Sequence[Image.Image], size: int | None = None) -> torch.Tensor:
    """PIL images → (N, 3, H, W) float in [-1, 1], as ``load_images`` reads them from disk (an
    8-bit PNG holds the same values), so images judged in memory are judged like saved ones."""
    arrays = []
    for image in images:
        image = image.convert("RGB")
        if size is not None and image.size != (size, size):
            image = image.resize((size, size), Image.BICUBIC)
        arrays.append(np.asarray(image, dtype=np.float32))
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (N, 3, H, W) in 0..255
    return batch / 127.5 - 1.0
