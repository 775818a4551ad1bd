"""Contact sheets: many images in one PNG, for READMEs and reports."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from pipelines.files import atomic_path


def save_grid(
    paths: Sequence[str | Path],
    target: str | Path,
    columns: int | None = None,
    cell: int | None = None,
    min_cell: int = 0,
) -> Path:
    """Tile ``paths`` row by row (``columns`` defaults to about √n) into ``target``; tiny images
    are enlarged (nearest neighbour) to ``min_cell`` pixels so that a person can see them."""
    if not paths:
        raise ValueError("no images to tile")
    images = [Image.open(p).convert("RGB") for p in paths]
    size = max(cell or images[0].width, min_cell)
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    sheet = Image.new("RGB", (columns * size, rows * size), "white")
    for i, image in enumerate(images):
        if image.size != (size, size):
            image = image.resize((size, size), Image.NEAREST if size > image.width else Image.BICUBIC)
        sheet.paste(image, ((i % columns) * size, (i // columns) * size))
    target = Path(target)
    with atomic_path(target) as tmp:
        sheet.save(tmp, format="PNG")
    return target
