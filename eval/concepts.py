"""What a run erased, as a list of concepts, and which evaluation images show each.

A concept is a dict of label axes to values: ``{"class": "three"}`` (every three, in any style),
``{"style": "red"}``, or ``{"class": "three", "style": "red"}`` (red threes only). A run that
erased several concepts at once, or one after another, has several; each gets its own UA and
the retained accuracy is measured over what none of them shows.
"""

from __future__ import annotations

from collections.abc import Iterable

from prompts import InputError

AXES = ("class", "style")
Concept = dict[str, str]

ERASED_HELP = (
    "what the run(s) erased, when the forget prompts do not say: AXIS=LABEL, axes joined by ',' for one "
    "concept (class=three,style=red: red threes only) and concepts separated by ';' "
    '("class=three;class=seven": both digits)'
)


def parse_erased(text: str) -> list[Concept]:
    """``"class=three;style=red"`` → [{"class": "three"}, {"style": "red"}]."""
    concepts = []
    for chunk in text.split(";"):
        concept: Concept = {}
        for part in chunk.split(","):
            axis, sep, label = part.partition("=")
            axis, label = axis.strip(), label.strip()
            if not sep or axis not in AXES or not label:
                raise InputError(
                    f"--erased takes AXIS=LABEL with AXIS class or style, e.g. class=three; got {part.strip()!r}"
                )
            if axis in concept:
                raise InputError(
                    f"--erased {chunk.strip()!r} names {axis} twice in one concept; separate concepts with ';' "
                    f'(e.g. "class=three;class=seven")'
                )
            concept[axis] = label
        if concept not in concepts:
            concepts.append(concept)
    return concepts


def describe(concepts: list[Concept]) -> str:
    """[{"class": "three"}, {"style": "red"}] → "class=three; style=red"."""
    return "; ".join(",".join(f"{a}={v}" for a, v in c.items()) for c in concepts)


def shows(entry: dict, concept: Concept) -> bool:
    return all(entry.get(axis) == label for axis, label in concept.items())


def rows_showing(entries: list[dict], concepts: list[Concept]) -> list[int]:
    """Rows whose prompt shows at least one of the concepts (every label of it matches)."""
    return [i for i, e in enumerate(entries) if any(shows(e, c) for c in concepts)]


def infer_erased(forget_prompts: Iterable[str], records) -> list[Concept]:
    """The concepts a forget list erased, read off the evaluation list's labels.

    A label is erased when the forget list holds every evaluation prompt that has it (all four
    styles of three → class three; every red digit → style red; three and seven → both), unless
    the other erased labels already cover all its prompts. When no
    label is covered whole (one red three), each forget prompt's own labels form a concept (red
    threes; red threes and red fives for two such prompts: not "red", which would count the red
    digits nobody erased as failures). Forget prompts the evaluation list lacks are ignored."""
    ordered = list(dict.fromkeys(forget_prompts))  # concepts come out in the forget list's order
    forget = set(ordered)
    by_prompt = {r.prompt: r.labels for r in records}
    matched = [by_prompt[p] for p in ordered if p in by_prompt]
    if not matched:
        raise InputError(
            "none of the run's forget prompts is in the evaluation prompt list, so what was erased is unknown; "
            "give --erased class=NAME or style=NAME (or --forget a list whose prompts are in --prompts)"
        )
    covered: dict[tuple[str, str], set[str]] = {}
    for axis in AXES:
        for label in dict.fromkeys(m[axis] for m in matched if axis in m):
            having = {r.prompt for r in records if r.labels.get(axis) == label}
            if having <= forget:
                covered[(axis, label)] = having
    for key in reversed(list(covered)):  # red, when every red prompt is a three or a five erased anyway
        others = set().union(*(v for k, v in covered.items() if k != key))
        if covered[key] <= others:
            del covered[key]
    if covered:
        return [{axis: label} for axis, label in covered]
    concepts = [dict(labels) for labels in dict.fromkeys(tuple((a, m[a]) for a in AXES if a in m) for m in matched)]
    if not all(concepts):
        raise InputError(
            "a forget prompt of the run has no class or style label in the evaluation list, and none is covered "
            "whole, so what was erased is unknown; give --erased (e.g. class=three)"
        )
    return concepts


def check_erased(concepts: list[Concept], labels: dict[str, list[str]], prompts: str, rows: list[dict]) -> None:
    """A label the evaluation list does not have, or a two-label concept no row shows (no red
    three though there are threes and red things), would leave UA undefined."""
    for concept in concepts:
        for axis, label in concept.items():
            if label not in labels[axis]:
                have = ", ".join(dict.fromkeys(labels[axis])) or "none"
                raise InputError(f"--erased {axis}={label}: --prompts {prompts} has no such {axis} (it has: {have})")
        if not any(shows(row, concept) for row in rows):
            named = ",".join(f"{axis}={label}" for axis, label in concept.items())
            raise InputError(
                f"--erased {named}: no prompt of --prompts {prompts} shows all of it, so its UA would be undefined; "
                "add such prompts to the list, or give the labels as separate concepts (class=…;style=…)"
            )
