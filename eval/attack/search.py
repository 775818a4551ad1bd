"""What the attack optimises: registered token parameterisations.

- ``text-grad`` (UnlearnDiffAtk's): per slot, a probability vector over the vocabulary, kept on
  the simplex; each step samples one token per slot (a straight-through estimator carries the
  gradient back to the probabilities), Adam with weight decay moves them, and a Euclidean
  projection puts them back on the simplex. The found prompt is the most probable tokens, as text
  a user can type.
- ``soft``: free embeddings per slot and text encoder: no vocabulary constraint, so no prompt a
  user could type; its success rate bounds what any k-token prompt can do (an upper bound).
- ``inversion``: the recovery probe (textual inversion, as in "Circumventing Concept Erasure"):
  one set of free embeddings shared by every image of the concept, learned from all of them at
  once. What it recovers is knowledge the weights still hold about the concept in general, not a
  trick fitted to one image.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
import torch.nn.functional as F

SEARCHES: dict[str, Callable[..., TokenSearch]] = {}


def register_search(name: str):
    def wrap(cls):
        SEARCHES[name] = cls
        cls.name = name
        return cls

    return wrap


def project_to_simplex(values: torch.Tensor, candidates: int = 2048) -> torch.Tensor:
    """Euclidean projection of each row (last dimension) onto {p ≥ 0, Σp = 1}, exactly, by
    sorting (Duchi et al., 2008): the result is max(v − θ, 0) with θ the one value that makes it
    sum to 1; UnlearnDiffAtk finds the same θ by bisection. (Michelot's iteration, which avoids
    the sort, took over a thousand passes on the attack's rows, whose Adam steps are near-equal.)

    Only the entries that stay positive decide θ, and after the attack's first few steps a row of
    the 49,408-token vocabulary keeps about a thousand. So θ is first computed from each row's
    ``candidates`` largest entries (a partial sort, several times cheaper than the full one, which
    was 40% of a style attack's time); a row whose support may reach past them is sorted in full.
    Both give the same θ bit for bit: the same leading values, summed in the same order."""
    if values.shape[-1] <= candidates:
        return _project_sorted(values, values.sort(dim=-1, descending=True).values)[0]
    projected, support = _project_sorted(values, values.topk(candidates, dim=-1).values)
    unsure = support >= candidates  # positive up to the last candidate: the support may go on
    if unsure.any():
        rows = values[unsure]
        projected[unsure] = _project_sorted(rows, rows.sort(dim=-1, descending=True).values)[0]
    return projected


def _project_sorted(values: torch.Tensor, ordered: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The projection given each row's largest entries in descending order (all of them, or
    enough to hold the support), and how many entries of each row stay positive."""
    cumulative = ordered.cumsum(-1) - 1
    index = torch.arange(1, ordered.shape[-1] + 1, device=values.device, dtype=values.dtype)
    support = (ordered - cumulative / index > 0).to(values.dtype) * index
    rho = support.amax(-1, keepdim=True).long()  # how many entries stay positive
    threshold = cumulative.gather(-1, rho - 1) / rho.to(values.dtype)
    return (values - threshold).clamp_min(0), rho.squeeze(-1)


class _SampleTokens(torch.autograd.Function):
    """One token per slot drawn from its probabilities, looked up in every embedding table;
    backward passes the gradient of the one-hot choice straight through to the probabilities,
    clipped to [-1, 1] (UnlearnDiffAtk's estimator). The lookup and the inverse-CDF draw do
    what its one-hot matrix product and ``multinomial`` do, without a (rows, vocab) product."""

    @staticmethod
    def forward(ctx, probs, generator, *tables):
        cumulative = probs.detach().cumsum(-1)
        uniform = torch.rand((*probs.shape[:-1], 1), generator=generator, device=probs.device, dtype=probs.dtype)
        drawn = torch.searchsorted(cumulative, uniform * cumulative[..., -1:]).squeeze(-1)
        drawn = drawn.clamp_max(probs.shape[-1] - 1)
        ctx.save_for_backward(*tables)
        return tuple(table[drawn] for table in tables)

    @staticmethod
    def backward(ctx, *grads):
        one_hot_grad = sum(g @ table.T for g, table in zip(grads, ctx.saved_tensors, strict=True))
        return (F.hardtanh(one_hot_grad), None, *(None for _ in grads))


class TokenSearch(ABC):
    """k adversarial slots for each of ``rows`` attacks, optimised independently (one loss per
    row, summed: Adam's steps are per element, so rows do not interact)."""

    name: str
    typed = True  # whether the found slots are tokens a user can type
    universal = False  # one set of slots shared by every row (learned from all rows at once)

    def __init__(self, rows, k, tables: list[torch.Tensor], vocabulary: torch.Tensor, lr, weight_decay, generator):
        """``tables``: each text encoder's token embeddings; ``vocabulary``: the token ids a
        found prompt may use (for a typed search the ids whose text tokenises back to them,
        ``TokenSlots.typable_vocabulary``; else every id but the start, end and padding tokens)."""
        self.vocabulary, self.generator = vocabulary, generator
        self.tables = [table[vocabulary.to(table.device)] for table in tables]

    @abstractmethod
    def embeddings(self, rows: torch.Tensor) -> list[torch.Tensor]:
        """The slot embeddings of the chosen rows for one optimisation step, one per table."""

    def step(self, rows: torch.Tensor) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    @abstractmethod
    def found(self, rows: torch.Tensor) -> list[torch.Tensor]:
        """The slot embeddings the attack would draw with now (no sampling)."""

    def found_ids(self, rows: torch.Tensor) -> torch.Tensor | None:
        return None


@register_search("text-grad")
class TextGrad(TokenSearch):
    def __init__(self, rows, k, tables, vocabulary, lr, weight_decay, generator):
        super().__init__(rows, k, tables, vocabulary, lr, weight_decay, generator)
        vocab = len(vocabulary)
        self.probs = torch.full((rows, k, vocab), 1.0 / vocab, device=self.tables[0].device, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.probs], lr=lr, weight_decay=weight_decay)

    def embeddings(self, rows):
        return list(_SampleTokens.apply(self.probs[rows], self.generator, *self.tables))

    def step(self, rows):
        super().step(rows)
        with torch.no_grad():  # the rows still attacked: the others' results are kept already
            self.probs[rows] = project_to_simplex(self.probs[rows])

    def found_ids(self, rows):
        return self.vocabulary.to(self.probs.device)[self.probs[rows].detach().argmax(-1)]

    def found(self, rows):
        picked = self.probs[rows].detach().argmax(-1)
        return [table[picked] for table in self.tables]


@register_search("soft")
class SoftPrompt(TokenSearch):
    typed = False

    def __init__(self, rows, k, tables, vocabulary, lr, weight_decay, generator):
        super().__init__(rows, k, tables, vocabulary, lr, weight_decay, generator)
        start = torch.randint(0, len(vocabulary), (rows, k), generator=generator, device=generator.device)
        # learned in float32 whatever the model's dtype: Adam's ε (1e-8) is 0 in fp16, and its steps
        # then turn the embeddings into inf/NaN; they are cast to the table's dtype when used
        self.dtypes = [table.dtype for table in self.tables]
        self.values = [table[start.to(table.device)].float().requires_grad_(True) for table in self.tables]
        self.optimizer = torch.optim.Adam(self.values, lr=lr)

    def embeddings(self, rows):
        return [v[rows].to(dtype) for v, dtype in zip(self.values, self.dtypes, strict=True)]

    def found(self, rows):
        return [v[rows].detach().to(dtype) for v, dtype in zip(self.values, self.dtypes, strict=True)]


@register_search("inversion")
class Inversion(SoftPrompt):
    universal = True

    def __init__(self, rows, k, tables, vocabulary, lr, weight_decay, generator):
        super().__init__(1, k, tables, vocabulary, lr, weight_decay, generator)

    def embeddings(self, rows):
        return [v.expand(len(rows), -1, -1) for v in super().embeddings(torch.arange(1))]

    def found(self, rows):
        return [v.expand(len(rows), -1, -1) for v in super().found(torch.arange(1))]
