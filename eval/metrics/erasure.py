"""Classifier-based erasure metrics (METHOD.md's vocabulary), from the judge's labels.

Class-wise: UA and RA. Style (UnlearnCanvas): UA, IRA, CRA. A row's truth is its prompt's
``class``/``style`` column; the judge's label is what the image shows.
"""

from __future__ import annotations

from eval.metrics.base import EvalContext, ModelImages, register_metric, value

DEFINITIONS = {
    "UA": "unlearning accuracy: share of images from the erased concept's prompts that the judge does NOT "
    "recognise as the erased {axis} (higher = better erased)",
    "RA": "retain accuracy: share of images from other classes' prompts recognised as their prompt's class",
    "IRA": "in-domain retain accuracy: share of images from other styles' prompts recognised as their style",
    "CRA": "cross-domain retain accuracy: share of all images recognised as their prompt's class",
    "CRA_erased_style": "CRA on the erased style's prompts only: objects still drawn under the erased style",
}


def _share(rows: list[int], hit) -> tuple[float | None, int]:
    return (sum(1 for i in rows if hit(i)) / len(rows) if rows else None), len(rows)


def _accuracy(model: ModelImages, axis: str, rows: list[int]) -> tuple[float | None, int]:
    truth, guess = model.entries, model.predictions[axis]
    return _share(rows, lambda i: guess[i] == truth[i].get(axis))


@register_metric("erasure")
def erasure_metrics(ctx: EvalContext, model: ModelImages) -> dict[str, dict]:
    out: dict[str, dict] = {}
    entries = model.entries
    for axis, erased in ctx.erased.items():
        if axis not in model.predictions:
            continue
        suffix = "" if len(ctx.erased) == 1 else f"_{axis}"
        ua, n = _share(ctx.forget_rows, lambda i, a=axis, e=erased: model.predictions[a][i] != e)
        out[f"UA{suffix}"] = value(ua, n, DEFINITIONS["UA"].format(axis=axis), percent=True)
        others = [i for i, e in enumerate(entries) if e.get(axis) and e.get(axis) != erased]
        key = "RA" if axis == "class" else "IRA"
        out[key] = value(*_accuracy(model, axis, others), DEFINITIONS[key], percent=True)
        if axis == "style" and "class" in model.predictions:
            labelled = [i for i, e in enumerate(entries) if e.get("class")]
            out["CRA"] = value(*_accuracy(model, "class", labelled), DEFINITIONS["CRA"], percent=True)
            under = [i for i in labelled if entries[i].get("style") == erased]
            out["CRA_erased_style"] = value(
                *_accuracy(model, "class", under), DEFINITIONS["CRA_erased_style"], percent=True
            )
    return out
