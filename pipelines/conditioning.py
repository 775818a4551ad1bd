"""What a UNet needs besides (x_t, t), as one object the training loop passes through.

SD 1.x and 2.x need only the text encoder's states; SDXL also needs the pooled embedding of its
second encoder and six size/crop "time ids". A family module in ``pipelines/families`` builds a
``Conditioning`` for a list of prompts; the loop, the latent bank, the sample-to-t path, the losses
and the mask only select rows, join and move it, and unpack it into the UNet call, so none of them
knows which family it is training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Conditioning:
    """Per-row conditioning: ``text`` is (B, L, D); every tensor in ``added`` has B rows too."""

    text: torch.Tensor
    added: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self):
        rows = self.text.shape[0]
        for name, tensor in self.added.items():
            if tensor.shape[0] != rows:
                raise ValueError(f"conditioning {name!r} has {tensor.shape[0]} rows, the text states {rows}")

    def __len__(self) -> int:
        return self.text.shape[0]

    def __getitem__(self, rows) -> Conditioning:
        """The rows ``rows`` selects (an index tensor, a slice or a list), as a Conditioning."""
        return Conditioning(self.text[rows], {k: v[rows] for k, v in self.added.items()})

    def expand(self, rows: int) -> Conditioning:
        """A one-row Conditioning repeated ``rows`` times (a view, no copy)."""
        if len(self) != 1:
            raise ValueError(f"only a one-row conditioning can be expanded, not {len(self)} rows")
        return Conditioning(
            self.text.expand(rows, *self.text.shape[1:]),
            {k: v.expand(rows, *v.shape[1:]) for k, v in self.added.items()},
        )

    @property
    def device(self) -> torch.device:
        return self.text.device

    def unet_kwargs(self) -> dict:
        """Keyword arguments of ``UNet2DConditionModel.forward`` besides (sample, timestep)."""
        kwargs = {"encoder_hidden_states": self.text}
        if self.added:
            kwargs["added_cond_kwargs"] = dict(self.added)
        return kwargs

    def joinable(self) -> tuple:
        """Conditionings with the same key can be joined by ``cat`` into one UNet call: the same
        text length and width, dtype and added inputs."""
        added = tuple((k, tuple(v.shape[1:]), v.dtype) for k, v in sorted(self.added.items()))
        return tuple(self.text.shape[1:]), self.text.dtype, added

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        """Rows of every part, in order (e.g. unconditional and conditional for guidance)."""
        names = set(parts[0].added)
        if any(set(p.added) != names for p in parts):
            raise ValueError("cannot join conditionings with different added inputs")
        return Conditioning(
            torch.cat([p.text for p in parts]), {k: torch.cat([p.added[k] for p in parts]) for k in sorted(names)}
        )
