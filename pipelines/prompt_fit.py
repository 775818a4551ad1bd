"""Does a prompt reach the text encoder whole?

CLIP's text encoder reads at most ``model_max_length`` tokens (77, of which two are the start
and end markers) and the pipelines silently cut the rest. Erasing a concept whose prompt was
cut would erase a different, shorter concept, so ``erase train`` refuses such prompts;
``erase generate`` only warns (an image from a cut prompt is still an image of that prompt's
first 75 tokens, which is what every SD tool draws).
"""

from __future__ import annotations

from prompts.errors import InputError


def _ids(tokenizer, prompt: str) -> list[int]:
    """Token ids of ``prompt`` without the start and end markers, uncut."""
    return tokenizer(prompt, add_special_tokens=False, truncation=False).input_ids


def room(tokenizer) -> int:
    return int(tokenizer.model_max_length) - 2


def overlong(tokenizer, prompts: list[str]) -> list[tuple[str, int]]:
    """(prompt, token count) for each prompt the encoder would truncate."""
    counts = [(p, len(_ids(tokenizer, p))) for p in dict.fromkeys(prompts)]
    return [(p, n) for p, n in counts if n > room(tokenizer)]


def require_whole(tokenizer, prompts: list[str], role: str) -> None:
    """Refuse prompts that tokenise to nothing or past the encoder's limit, naming every one of
    them in one line (a list of eight over-long prompts should not take eight attempts)."""
    limit = room(tokenizer)
    problems = []
    for prompt in dict.fromkeys(prompts):
        ids = _ids(tokenizer, prompt)
        if not ids:
            raise InputError(f"{role} {prompt!r} tokenises to nothing; write the concept in words")
        if len(ids) > limit:
            kept = tokenizer.decode(ids[limit - 6 : limit]).strip()
            problems.append(f"{prompt[:40]!r}… ({len(ids)} tokens, cut after '…{kept}')")
    if len(problems) == 1:
        raise InputError(
            f"{role} {problems[0]} is longer than the {limit} tokens the text encoder reads, so it would be "
            "truncated; shorten it"
        )
    if problems:
        raise InputError(
            f"{len(problems)} {role}s are longer than the {limit} tokens the text encoder reads and would be "
            f"truncated; shorten them: {'; '.join(problems)}"
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
