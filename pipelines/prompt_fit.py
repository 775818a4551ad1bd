"""Does a prompt reach the text encoder whole?

CLIP's text encoder reads at most ``model_max_length`` tokens (77, of which two are the start
and end markers) and the pipelines silently cut the rest. Erasing a concept whose prompt was
cut would erase a different, shorter concept, so ``erase train`` refuses such prompts;
``erase generate`` only warns (an image from a cut prompt is still an image of that prompt's
first 75 tokens, which is what every SD tool draws).
"""

from __future__ import annotations

from prompts.errors import InputError


def token_count(tokenizer, prompt: str) -> int:
    """Tokens in ``prompt`` without the start and end markers."""
    return len(tokenizer(prompt, add_special_tokens=False, truncation=False).input_ids)


def room(tokenizer) -> int:
    return int(tokenizer.model_max_length) - 2


def overlong(tokenizer, prompts: list[str]) -> list[tuple[str, int]]:
    """(prompt, token count) for each prompt the encoder would truncate."""
    counts = [(p, token_count(tokenizer, p)) for p in dict.fromkeys(prompts)]
    return [(p, n) for p, n in counts if n > room(tokenizer)]


def require_whole(tokenizer, prompts: list[str], role: str) -> None:
    """Refuse a prompt that tokenises to nothing or past the encoder's limit."""
    for prompt in dict.fromkeys(prompts):
        if prompt and token_count(tokenizer, prompt) == 0:
            raise InputError(f"{role} {prompt!r} tokenises to nothing; write the concept in words")
    for prompt, n in overlong(tokenizer, prompts):
        ids = tokenizer(prompt, add_special_tokens=False).input_ids
        kept = tokenizer.decode(ids[room(tokenizer) - 6 : room(tokenizer)]).strip()
        raise InputError(
            f"{role} {prompt[:40]!r}… has {n} tokens but the text encoder reads {room(tokenizer)}, so it would be "
            f"truncated after '…{kept}'; shorten it"
        )


def truncation_warning(tokenizer, prompts: list[str]) -> str | None:
    """One line saying how many prompts the encoder will truncate, or None."""
    cut = overlong(tokenizer, prompts)
    if not cut:
        return None
    prompt, n = cut[0]
    return (
        f"warning: {len(cut)} prompt(s) are longer than the text encoder's {room(tokenizer)} tokens and are "
        f"truncated (the first, {prompt[:40]!r}…, has {n})"
    )
