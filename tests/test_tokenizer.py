"""The offline CLIP tokenizer gives OpenAI CLIP's ids (as open_clip computes them)."""

import open_clip
import pytest

PROMPTS = ["a plain drawing of the digit three", "A Van Gogh painting of a café, at night!", "", "église 教会 🙂"]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_ids_match_open_clip(tokenizer, prompt):
    ours = tokenizer(prompt, padding="max_length", max_length=77, truncation=True).input_ids
    reference = open_clip.tokenize([prompt])[0].tolist()
    end = reference.index(49407) + 1  # open_clip pads with 0 after the end token, SD with the end token
    assert ours[:end] == reference[:end]
    assert set(ours[end:]) <= {49407}


def test_long_prompts_are_truncated_to_77(tokenizer):
    ids = tokenizer("cat " * 200, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77 and ids[-1] == 49407
