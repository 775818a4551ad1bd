"""Read prompt lists: ``.txt`` (one prompt a line) and ``.csv`` with ESD's columns.

CSV columns: ``case_number, prompt, evaluation_seed`` are required; ``concept``, ``class`` and
``style`` are optional labels (``artist`` is read as ``style``, as in ESD's art list), and
``anchor`` optionally names the prompt erasure steers each row toward. Any other
column is refused, so a typo in a header cannot silently drop a label. In ``.txt`` files blank
lines and lines starting with ``#`` are skipped; prompt *i* gets seed ``seed + i``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from prompts.errors import PromptFileError
from prompts.records import ANCHOR_COLUMN, LABEL_COLUMNS, PromptRecord

REQUIRED_COLUMNS = ("case_number", "prompt", "evaluation_seed")
COLUMN_ALIASES = {"artist": "style"}
SUFFIXES = (".txt", ".csv")


def _read_text(path: Path) -> str:
    if path.exists() and not path.is_file() and not path.is_dir():  # reading a FIFO would block forever
        raise PromptFileError(path, None, "is not a regular file (a pipe or a device?); give a .txt or .csv file")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PromptFileError(
            path, None, "file not found; give a .txt or .csv prompt list or a shipped list name"
        ) from None
    except IsADirectoryError:
        raise PromptFileError(path, None, "is a folder; give a .txt or .csv prompt list") from None
    except OSError as err:
        raise PromptFileError(path, None, f"cannot be read ({err.strerror}); check its permissions") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise PromptFileError(
            path, line, f"not UTF-8 text (byte 0x{raw[err.start]:02x}); save the file as UTF-8"
        ) from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise PromptFileError(path, line, "contains a NUL byte; is this a binary file?")
    return text


def _check_prompt(path: Path, line: int, prompt: str) -> str:
    prompt = prompt.strip()
    if not prompt:
        raise PromptFileError(path, line, "empty prompt; remove the line or write a prompt")
    return prompt


def parse_txt(path: Path, text: str, seed: int = 0) -> list[PromptRecord]:
    records = []
    for line in text.splitlines():
        prompt = line.strip()
        if not prompt or prompt.startswith("#"):
            continue
        index = len(records)
        records.append(PromptRecord(case_id=str(index), prompt=prompt, seed=seed + index))
    return records


def parse_csv(path: Path, text: str) -> list[PromptRecord]:
    reader = csv.reader(io.StringIO(text))
    try:
        rows = list(reader)
    except csv.Error as err:  # e.g. a field past the csv module's 131,072-character limit
        raise PromptFileError(path, reader.line_num, f"malformed CSV ({err}); is this a prompt list?") from None
    # Keep each row's physical line number for messages (quoted fields may span lines; rare).
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise PromptFileError(path, 1, f"no header; the first line must name the columns {', '.join(REQUIRED_COLUMNS)}")
    header = [COLUMN_ALIASES.get(h.strip().lower(), h.strip().lower()) for h in rows[0]]
    allowed = REQUIRED_COLUMNS + LABEL_COLUMNS + (ANCHOR_COLUMN,)
    for name in header:
        if name not in allowed:
            raise PromptFileError(path, 1, f"unknown column {name!r}; allowed columns: {', '.join(allowed)}")
    duplicated = {h for h in header if header.count(h) > 1}
    if duplicated:
        raise PromptFileError(path, 1, f"column {sorted(duplicated)[0]!r} appears twice")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise PromptFileError(
            path, 1, f"missing column(s) {', '.join(missing)}; ESD-style CSVs need {', '.join(REQUIRED_COLUMNS)}"
        )

    records: list[PromptRecord] = []
    seen: dict[str, int] = {}
    for line_no, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise PromptFileError(
                path, line_no, f"{len(row)} fields, but the header has {len(header)}; quote prompts that contain commas"
            )
        cells = {name: value.strip() for name, value in zip(header, row, strict=True)}
        case_id = cells["case_number"]
        if not case_id:
            raise PromptFileError(path, line_no, "empty case_number")
        if case_id in seen:
            raise PromptFileError(
                path, line_no, f"case_number {case_id!r} repeats line {seen[case_id]}; case numbers must be unique"
            )
        seen[case_id] = line_no
        try:
            seed = int(cells["evaluation_seed"])
        except ValueError:
            raise PromptFileError(
                path, line_no, f"evaluation_seed {cells['evaluation_seed']!r} is not an integer"
            ) from None
        if not 0 <= seed < 2**63:
            raise PromptFileError(path, line_no, f"evaluation_seed {seed} is out of range; use 0 ≤ seed < 2**63")
        labels = {name: cells[name] for name in LABEL_COLUMNS if name in cells and cells[name]}
        anchor = cells.get(ANCHOR_COLUMN) or None  # an empty cell means "use --anchor"
        records.append(PromptRecord(case_id, _check_prompt(path, line_no, cells["prompt"]), seed, labels, anchor))
    return records


def read_prompt_file(path: str | Path, seed: int = 0) -> list[PromptRecord]:
    """Parse one prompt list file; raises ``PromptFileError`` naming file, line and problem."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise PromptFileError(path, None, f"unsupported extension {path.suffix or '(none)'!r}; use .txt or .csv")
    text = _read_text(path)
    records = parse_csv(path, text) if suffix == ".csv" else parse_txt(path, text, seed)
    if not records:
        raise PromptFileError(path, None, "holds no prompts")
    return records
