"""List the prompt lists shipped with the toolkit, or print the records of one list or file."""

from __future__ import annotations

import argparse

from prompts import load_prompts, shipped_lists


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="a shipped list name or a .txt/.csv path to show")


def run(args: argparse.Namespace) -> int:
    if args.name is None:
        print("\n".join(shipped_lists()))
        return 0
    for record in load_prompts(args.name):
        labels = " ".join(f"{k}={v}" for k, v in record.labels.items())
        print(f"{record.case_id}\tseed={record.seed}\t{record.prompt}" + (f"\t[{labels}]" if labels else ""))
    return 0
