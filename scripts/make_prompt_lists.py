"""Write the shipped prompt lists under ``prompts/lists`` (deterministic; the test suite checks
that the committed files equal this script's output, so edit here, then run it).

    python scripts/make_prompt_lists.py
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.default.render import DIGIT_WORDS, STYLES, prompt_for  # noqa: E402

LISTS = ROOT / "prompts" / "lists"

IMAGENETTE = (
    "tench", "English springer", "cassette player", "chain saw", "church",
    "French horn", "garbage truck", "gas pump", "golf ball", "parachute",
)  # fmt: skip
OBJECT_TEMPLATES = (
    "a photo of a {}",
    "a picture of a {}",
    "a close-up photo of a {}",
    "a photo of a {} outdoors",
    "a blurry photo of a {}",
)
ARTISTS = (
    "Vincent van Gogh", "Pablo Picasso", "Claude Monet", "Rembrandt", "Andy Warhol",
    "Salvador Dali", "Katsushika Hokusai", "Gustav Klimt", "Thomas Kinkade", "Kelly McKernan",
)  # fmt: skip
ART_SUBJECTS = (
    "a harbour at dawn",
    "a woman reading a letter",
    "a bowl of fruit",
    "a mountain village",
    "a portrait of an old man",
)
GENERAL_RETAIN = (
    "a photo of a red bicycle leaning against a brick wall",
    "a bowl of ramen on a wooden table",
    "a lighthouse on a rocky coast at sunset",
    "a golden retriever catching a frisbee in a park",
    "a city street at night in the rain",
    "a cup of coffee next to an open book",
    "a snowy mountain range under a clear blue sky",
    "a child flying a kite on a beach",
    "an old wooden rowing boat on a calm lake",
    "a bunch of sunflowers in a glass vase",
    "a tabby cat sleeping on a windowsill",
    "a steam train crossing a stone bridge",
    "a market stall full of fresh vegetables",
    "a hot air balloon over green fields",
    "a modern kitchen with white cabinets",
    "a forest path covered in autumn leaves",
    "a plate of pancakes with berries and syrup",
    "a desert highway stretching to the horizon",
    "a pair of running shoes on a gym floor",
    "a wooden cabin in a pine forest",
    "a sailboat on the open sea",
    "a close-up of a honeybee on a flower",
    "a library with tall shelves of books",
    "a bowl of oranges on a kitchen counter",
    "a busy train station platform",
    "a vintage car parked on a cobblestone street",
    "a waterfall in a tropical jungle",
    "a slice of chocolate cake on a plate",
    "a herd of cows grazing in a meadow",
    "a person riding a horse along a beach",
    "a colourful parrot perched on a branch",
    "a bridge over a river in a small town",
    "a laptop and a notebook on a desk",
    "a field of tulips in spring",
    "a fishing village with colourful houses",
    "an astronaut floating above the earth",
    "a street musician playing a violin",
    "a garden with a stone fountain",
    "a bowl of salad with tomatoes and cucumbers",
    "a skyline of tall buildings at dusk",
)


# The style each style's forget prompts are anchored to: the plain drawing, and for plain itself
# the inverted one.
STYLE_ANCHORS = {"plain": "inverted", "inverted": "plain", "red": "plain", "blueprint": "plain"}


def csv_text(rows: list[dict[str, object]], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def txt_text(prompts: list[str], comment: str) -> str:
    return f"# {comment}\n" + "\n".join(prompts) + "\n"


def all_lists() -> dict[str, str]:
    """Relative path → file text."""
    files: dict[str, str] = {}
    cases = [(s, d) for s in STYLES for d in range(10)]
    rows = [
        {"case_number": i, "prompt": prompt_for(s, d), "evaluation_seed": 1000 + i, "class": DIGIT_WORDS[d], "style": s}
        for i, (s, d) in enumerate(cases)
    ]
    files["default/digits.csv"] = csv_text(rows, ["case_number", "prompt", "evaluation_seed", "class", "style"])
    for d, word in enumerate(DIGIT_WORDS):
        forget = [prompt_for(s, d) for s in STYLES]
        retain = [prompt_for(s, o) for s in STYLES for o in range(10) if o != d]
        files[f"default/classes/{word}-forget.txt"] = txt_text(forget, f"the digit {word} in every style")
        files[f"default/classes/{word}-retain.txt"] = txt_text(retain, f"every digit but {word}, in every style")
    for style in STYLES:
        # Each forget prompt is anchored to the same digit in a neighbouring style, so erasure
        # pushes away from the style's direction only and the digit survives (erase/losses.py).
        anchor = STYLE_ANCHORS[style]
        forget = [
            {
                "case_number": d,
                "prompt": prompt_for(style, d),
                "evaluation_seed": 1000 + cases.index((style, d)),
                "class": DIGIT_WORDS[d],
                "style": style,
                "anchor": prompt_for(anchor, d),
            }
            for d in range(10)
        ]
        retain = [prompt_for(s, d) for s in STYLES if s != style for d in range(10)]
        files[f"default/styles/{style}-forget.csv"] = csv_text(
            forget, ["case_number", "prompt", "evaluation_seed", "class", "style", "anchor"]
        )
        files[f"default/styles/{style}-retain.txt"] = txt_text(retain, f"every digit in every style but {style}")

    rows = [
        {"case_number": i, "prompt": t.format(c), "evaluation_seed": 2000 + i, "class": c}
        for i, (c, t) in enumerate((c, t) for c in IMAGENETTE for t in OBJECT_TEMPLATES)
    ]
    files["sd/imagenette.csv"] = csv_text(rows, ["case_number", "prompt", "evaluation_seed", "class"])
    rows = [
        {
            "case_number": i,
            "prompt": f"{subject} in the style of {artist}",
            "evaluation_seed": 3000 + i,
            "style": artist,
        }
        for i, (artist, subject) in enumerate((a, s) for a in ARTISTS for s in ART_SUBJECTS)
    ]
    files["sd/artists.csv"] = csv_text(rows, ["case_number", "prompt", "evaluation_seed", "style"])
    files["sd/retain-general.txt"] = txt_text(
        list(GENERAL_RETAIN), "general scenes and objects, written for this project"
    )
    return files


def main() -> None:
    for relative, text in all_lists().items():
        path = LISTS / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    print(f"wrote {len(all_lists())} lists under {LISTS}")


if __name__ == "__main__":
    main()
