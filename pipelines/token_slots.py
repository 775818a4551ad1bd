"""Adversarial token slots: k positions right after the start token (UnlearnDiffAtk's prefix),
shared by `erase attack` (eval/attack/) and adversarial training (erase/adversarial.py).

The prompt is written with k filler words in front; a forward hook on every text encoder's token
embedding replaces the fillers' embeddings with the attack's, row by row. Everything downstream,
the pipeline's own prompt encoding included (two encoders and the pooled output on SDXL), is
unchanged, so gradients reach the attack through the family's ordinary conditioning.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator

import torch

from pipelines.prompt_fit import room
from prompts import InputError

FILLER = "a"  # one token in every CLIP vocabulary; its embedding is overwritten
_TYPABLE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer → its typable ids (~3 s to find)


def text_encoders(pipe) -> list:
    return [e for e in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if e is not None]


def tokenizers(pipe) -> list:
    return [t for t in (pipe.tokenizer, getattr(pipe, "tokenizer_2", None)) if t is not None]


class TokenSlots:
    def __init__(self, pipe, k: int):
        self.k = k
        self.encoders = text_encoders(pipe)
        self.tokenizers = tokenizers(pipe)
        self.tokenizer = self.tokenizers[0]
        vocab = {e.get_input_embeddings().weight.shape[0] for e in self.encoders}
        if len(vocab) != 1:
            raise InputError(f"the text encoders' vocabularies differ in size ({sorted(vocab)}); cannot attack")
        self.vocab_size = vocab.pop()

    def slotted(self, prompts: list[str]) -> list[str]:
        """Prompts with the k fillers in front; checked to tokenise as [start, filler×k, prompt...]
        and to fit the text encoder whole: past its limit the prompt's end would be cut silently
        (the attack would then bring back a prompt that no longer names the concept), and more
        slots than the encoder has positions cannot be filled at all."""
        out = [" ".join([FILLER] * self.k + [p]) for p in prompts]
        for tokenizer in self.tokenizers:
            filler = tokenizer(FILLER).input_ids[1]
            limit = room(tokenizer)
            for prompt, text in zip(prompts, out, strict=True):
                ids = tokenizer(text, add_special_tokens=False, truncation=False).input_ids
                if len(ids) > limit:
                    most = self.k - len(ids) + limit
                    fix = f"use at most {most} attack tokens, or a shorter prompt" if most > 0 else "shorten the prompt"
                    raise InputError(
                        f"{self.k} attack tokens in front of {prompt[:40]!r} make {len(ids)} tokens, more than the "
                        f"{limit} the text encoder reads, so the prompt would be cut; {fix}"
                    )
                if ids[: self.k] != [filler] * self.k:
                    raise InputError(f"cannot place {self.k} attack tokens in front of {text!r}")
        return out

    def vocabulary(self) -> torch.Tensor:
        """Token ids a found prompt may use: all but the tokenisers' special ones (start, end,
        padding), which the text a user types cannot hold."""
        special = {i for t in self.tokenizers for i in t.all_special_ids}
        return torch.tensor([i for i in range(self.vocab_size) if i not in special])

    def typable_vocabulary(self) -> torch.Tensor:
        """The ids a *typed* search may pick: tokens whose text, written twice with a space
        between, tokenises back to the token twice, in every tokenizer. Word pieces fail (CLIP's
        decoder joins them to the next token, which then tokenises as another word), and so do
        tokens that change when cleaned. With the whole vocabulary about 40% of random 3-token
        prefixes, written out as text, tokenised to other ids than the ones searched and judged;
        from these ids none did (tests/test_attack.py). CLIP keeps 34,301 of 49,408."""
        kept = set(self.vocabulary().tolist())
        for tokenizer in self.tokenizers:
            kept &= _typable_ids(tokenizer)
        return torch.tensor(sorted(kept), dtype=torch.long)

    def tables(self) -> list[torch.Tensor]:
        """Each encoder's token-embedding table (vocab, width), frozen."""
        return [e.get_input_embeddings().weight.detach() for e in self.encoders]

    @contextlib.contextmanager
    def filled(self, embeddings: list[torch.Tensor]) -> Iterator[None]:
        """While open, every call of encoder i has its slot embeddings replaced by
        ``embeddings[i]`` (rows, k, width): one row per prompt the encoder is called with."""

        def fill(values):
            def hook(module, args, output):
                if output.shape[0] != values.shape[0]:
                    raise RuntimeError(
                        f"attack slots for {values.shape[0]} prompts, encoder called with {output.shape[0]}"
                    )
                return torch.cat([output[:, :1], values.to(output.dtype), output[:, 1 + self.k :]], dim=1)

            return hook

        handles = [
            e.get_input_embeddings().register_forward_hook(fill(v))
            for e, v in zip(self.encoders, embeddings, strict=True)
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def words(self, ids: list[int]) -> str:
        """Token ids as the text a user would type (CLIP's decoder joins words with spaces)."""
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()


def _typable_ids(tokenizer) -> set[int]:
    cached = _TYPABLE.get(tokenizer)
    if cached is None:
        cached = set()
        for i in range(len(tokenizer)):
            text = tokenizer.decode([i, i]).strip()
            if tokenizer(text, add_special_tokens=False).input_ids == [i, i]:
                cached.add(i)
        _TYPABLE[tokenizer] = cached
    return cached
