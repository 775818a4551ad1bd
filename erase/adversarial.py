"""Adversarial training (AdvUnlearn, Zhang et al. 2024): erase the concept also from the prompts
an attacker would write to bring it back.

Every ``--adversarial-every`` steps a round of attack runs against the model being erased: for each
forget prompt, k prefix tokens (free embeddings in each text encoder's token space, placed as
`erase attack` places its tokens) are moved by Adam so that the model, given the prefixed prompt,
predicts on the concept's latents what the *original* model predicts for the plain prompt, i.e.
the concept is back. Until the next round the unlearning loss takes the prefixed prompts in place
of the plain ones, so the erasure is trained against the strongest prompt found so far.

Settings follow AdvUnlearn's code where they transfer: one prefix token, word-embedding space,
Adam at lr 1e-3 for 30 iterations per round, each round warm-started from the last one's tokens
("latest"), the frozen model's prediction as the attack's target. AdvUnlearn attacks before every
step (30 attack iterations per training step); a round every N steps costs 30/N per step here,
and N is the user's.
The x_t the attack sees come from the run's x_t source (the latent bank or the frozen paths), as
the training steps' do.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from erase.xt_sources.base import Draw
from pipelines.conditioning import Conditioning
from pipelines.token_slots import TokenSlots

CHECKPOINT_KEY = "__adversarial__"  # + ".<encoder index>", in the checkpoint's optimizer file


class AdversarialPrompts:
    """The forget prompts' adversarial prefixes, one (k, width) block per prompt and text encoder."""

    def __init__(self, pipe, family, prompts: list[str], tokens: int, generator: torch.Generator):
        self.pipe, self.family = pipe, family
        self.slots = TokenSlots(pipe, tokens)
        self.prompts = self.slots.slotted(prompts)  # refuses a prompt the prefix does not fit in front of
        vocabulary = self.slots.vocabulary()
        start = vocabulary[torch.randint(len(vocabulary), (len(prompts), tokens), generator=generator)]
        self.values = [table[start.to(table.device)].clone().float() for table in self.slots.tables()]
        self.cond: Conditioning | None = None  # every prompt with its current prefix; None before round one

    def encode(self, rows: torch.Tensor, values: list[torch.Tensor]) -> Conditioning:
        """The conditioning of the prefixed prompts ``rows``, differentiable in ``values``."""
        with self.slots.filled([v[rows] for v in values]):
            return self.family.conditioning(self.pipe, [self.prompts[i] for i in rows.tolist()])

    def attack(
        self,
        iterations: int,
        lr: float,
        draw: Callable[[], Draw],
        target: Callable[[Draw], torch.Tensor],
        predict: Callable[[Draw, Conditioning], torch.Tensor],
        average: Callable[[torch.Tensor], torch.Tensor],
    ) -> dict:
        """One round: ``iterations`` Adam steps on the prefixes (only they get gradients; the
        UNet's do not move), then the prefixed prompts are encoded for the training steps.
        ``draw`` gives forget latents; ``target`` is the original model's prediction for the
        plain prompt; ``predict`` the model being erased under a conditioning; ``average`` makes
        every process hold the same prefixes."""
        values = [v.detach().clone().requires_grad_(True) for v in self.values]
        optimizer = torch.optim.Adam(values, lr=lr)  # fresh each round, as AdvUnlearn's
        losses = []
        for _ in range(iterations):
            batch = draw()
            goal = target(batch)
            loss = F.mse_loss(predict(batch, self.encode(batch.rows, values)), goal)
            grads = torch.autograd.grad(loss, values, allow_unused=True)
            for value, grad in zip(values, grads, strict=True):
                value.grad = torch.zeros_like(value) if grad is None else grad
            optimizer.step()
            losses.append(loss.item())
        self.values = [average(v.detach()) for v in values]
        self._encode_all()
        return {"adversarial_loss_first": losses[0], "adversarial_loss_last": losses[-1]}

    def condition(self, draw: Draw) -> Conditioning | None:
        """The unlearning loss's conditioning for ``draw``'s rows: the prefixed prompts once a
        round has run, else None (the plain prompts)."""
        return None if self.cond is None else self.cond[draw.rows]

    def state(self) -> dict[str, torch.Tensor]:
        return {f"{CHECKPOINT_KEY}.{i}": v.cpu() for i, v in enumerate(self.values)}

    def load_state(self, state: dict[str, torch.Tensor], started: bool) -> None:
        """Back to a checkpoint's prefixes; ``started``: a round had run before it was written."""
        self.values = [state[f"{CHECKPOINT_KEY}.{i}"].to(v.device) for i, v in enumerate(self.values)]
        if started:
            self._encode_all()

    def _encode_all(self) -> None:
        """Every forget prompt with its current prefix, for the training steps (no grad)."""
        with torch.no_grad():
            self.cond = self.encode(torch.arange(len(self.prompts)), self.values)
