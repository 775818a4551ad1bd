"""The default model's judge: a small CNN that names a 32×32 image's digit and its style.

It is trained on the same renderings as the default model (``scripts/train_default_model.py``)
and ships beside it, so erasure on the default model can be scored offline: a digit or style
counts as "still drawn" when this classifier recognises it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pipelines.files import atomic_path, write_json_atomic

SHIPPED_FOLDER = Path(__file__).parent / "digit_style"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.GroupNorm(8, c_out),
        nn.GELU(),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.GroupNorm(8, c_out),
        nn.GELU(),
        nn.AvgPool2d(2),
    )


class DigitStyleClassifier(nn.Module):
    """Two heads over one trunk: ``digit_logits`` (10) and ``style_logits`` (len(styles))."""

    def __init__(self, styles: list[str], num_digits: int = 10, width: int = 16):
        super().__init__()
        self.styles = list(styles)
        self.num_digits = num_digits
        self.width = width
        self.trunk = nn.Sequential(
            _block(3, width), _block(width, 2 * width), _block(2 * width, 4 * width)
        )  # (B, 4w, 4, 4)
        self.digit_head = nn.Linear(4 * width * 16, num_digits)
        self.style_head = nn.Linear(4 * width * 16, len(self.styles))

    @property
    def num_features(self) -> int:
        return 4 * self.width * 16

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 32, 32) in [-1, 1] → (B, num_features); also the feature space for FID."""
        return self.trunk(images).flatten(1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(images)
        return self.digit_head(feats), self.style_head(feats)

    def config(self) -> dict:
        return {"styles": self.styles, "num_digits": self.num_digits, "width": self.width}

    def save(self, folder: str | Path, metadata: dict | None = None) -> None:
        """Write weights and config atomically (temp names, then rename)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with atomic_path(folder / WEIGHTS_NAME) as tmp:
            save_file(tensors, str(tmp))
        write_json_atomic(folder / CONFIG_NAME, self.config() | {"metadata": metadata or {}})


def load_digit_style_classifier(folder: str | Path = SHIPPED_FOLDER) -> DigitStyleClassifier:
    """Load the shipped classifier (or one at ``folder``) in eval mode, on the CPU."""
    folder = Path(folder)
    weights, config_path = folder / WEIGHTS_NAME, folder / CONFIG_NAME
    for needed in (weights, config_path):
        if not needed.is_file():
            raise FileNotFoundError(
                f"digit/style classifier file {needed} is missing; "
                "run `python scripts/train_default_model.py --stages classifier` to rebuild it"
            )
    config = json.loads(config_path.read_text())
    model = DigitStyleClassifier(config["styles"], config["num_digits"], config["width"])
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model.eval()
