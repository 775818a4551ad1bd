"""Build a CLIP tokenizer offline from the BPE vocabulary that open_clip ships.

Stable Diffusion's tokenizer is OpenAI's CLIP BPE. Its merges are inside the open_clip wheel
(``bpe_simple_vocab_16e6.txt.gz``), so we can write the ``vocab.json``/``merges.txt`` pair that
``transformers.CLIPTokenizer`` reads without touching a model hub. Token ids match OpenAI's.
"""

from __future__ import annotations

import gzip
import json
from importlib import resources
from pathlib import Path

from transformers import CLIPTokenizer

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
VOCAB_SIZE = 49408
MODEL_MAX_LENGTH = 77


def _bytes_to_unicode() -> list[str]:
    """GPT-2's reversible byte → printable-character table, in id order."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def _open_clip_merges() -> list[str]:
    bpe = resources.files("open_clip").joinpath("bpe_simple_vocab_16e6.txt.gz")
    with bpe.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as text:
        lines = text.read().split("\n")
    # Line 0 is a version header; CLIP uses the first 49152 - 256 - 2 merges.
    return lines[1 : 49152 - 256 - 2 + 1]


def write_clip_tokenizer_files(folder: str | Path, config: bool = True, pad_token: str = EOS_TOKEN) -> Path:
    """Write ``vocab.json``, ``merges.txt`` (and ``tokenizer_config.json``) into ``folder``.

    ``pad_token`` is the one place the families' tokenizers differ: SD 1.x and SDXL's first
    tokenizer pad with the end token, SD 2.x and SDXL's second (OpenCLIP) tokenizer with "!"."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = _open_clip_merges()
    chars = _bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    assert len(tokens) == VOCAB_SIZE, len(tokens)
    vocab = {token: index for index, token in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    if not config:
        return folder
    settings = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": pad_token,
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")
    return folder


def build_clip_tokenizer(folder: str | Path, pad_token: str = EOS_TOKEN) -> CLIPTokenizer:
    """Write the tokenizer files into ``folder`` and load them with ``CLIPTokenizer``."""
    write_clip_tokenizer_files(folder, pad_token=pad_token)
    return CLIPTokenizer.from_pretrained(str(folder))
