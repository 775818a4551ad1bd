"""The embedded default model's training data: scikit-learn's bundled digits, drawn in styles.

``sklearn.datasets.load_digits`` ships 1,797 handwritten digits at 8×8 inside the package, so
the data exists offline on every machine. Each digit is upsampled to 32×32 and rendered
deterministically in every style; the prompt of a rendering is ``PROMPT_TEMPLATE`` filled in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PROMPT_TEMPLATE = "a {style} drawing of the digit {word}"
IMAGE_SIZE = 32

# style -> (ink RGB, paper RGB). The digit's stroke intensity blends paper into ink.
# `plain` is the digit as load_digits draws it: light strokes on a dark background.
STYLE_COLOURS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "plain": ((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)),
    "inverted": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "red": ((0.85, 0.05, 0.05), (1.0, 0.95, 0.85)),
    "blueprint": ((1.0, 1.0, 1.0), (0.05, 0.2, 0.65)),
}
STYLES = tuple(STYLE_COLOURS)


def prompt_for(style: str, digit: int) -> str:
    """The one prompt the default model was trained to follow for ``(style, digit)``."""
    if style not in STYLE_COLOURS:
        raise ValueError(f"unknown style {style!r}; choose one of {', '.join(STYLES)}")
    return PROMPT_TEMPLATE.format(style=style, word=DIGIT_WORDS[digit])


@dataclass(frozen=True)
class DigitRenderings:
    """Rendered images with their labels; ``images`` are in [-1, 1], shape (N, 3, 32, 32)."""

    images: torch.Tensor
    digits: torch.Tensor  # (N,) int64, 0..9
    styles: torch.Tensor  # (N,) int64, index into STYLES
    source_index: torch.Tensor  # (N,) int64, row of load_digits the image came from

    @property
    def prompts(self) -> list[str]:
        return [prompt_for(STYLES[s], d) for s, d in zip(self.styles.tolist(), self.digits.tolist(), strict=True)]

    def subset(self, mask: torch.Tensor) -> DigitRenderings:
        return DigitRenderings(self.images[mask], self.digits[mask], self.styles[mask], self.source_index[mask])


def load_strokes() -> tuple[torch.Tensor, torch.Tensor]:
    """Stroke intensities in [0, 1] at 32×32, shape (N, 1, 32, 32), and the digit labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    strokes = F.interpolate(small, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    return strokes.clamp(0.0, 1.0), torch.tensor(bunch.target, dtype=torch.int64)


def paint(strokes: torch.Tensor, style: str) -> torch.Tensor:
    """Blend paper into ink by stroke intensity; returns RGB in [-1, 1], (N, 3, 32, 32)."""
    ink, paper = (torch.tensor(c).view(1, 3, 1, 1) for c in STYLE_COLOURS[style])
    rgb = paper + (ink - paper) * strokes
    return rgb * 2.0 - 1.0


def render_all(styles: tuple[str, ...] = STYLES) -> DigitRenderings:
    """Every load_digits sample in every style, style-major."""
    strokes, digits = load_strokes()
    n = len(digits)
    images = torch.cat([paint(strokes, style) for style in styles])
    style_ids = torch.cat([torch.full((n,), STYLES.index(style)) for style in styles])
    index = torch.arange(n).repeat(len(styles))
    return DigitRenderings(images, digits.repeat(len(styles)), style_ids, index)


def held_out_mask(source_index: torch.Tensor, every: int = 5) -> torch.Tensor:
    """Every ``every``-th load_digits sample is held out (for the classifier's accuracy)."""
    return source_index % every == 0
