"""Convert torch-fidelity's Inception-v3 weights (a pickled .pth state dict) to .safetensors,
once, so that `erase eval --fid-features inception --fid-weights FILE` never unpickles.

    python scripts/convert_inception_weights.py pt_inception-2015-12-05-6726825d.pth

The .pth is read with torch.load(weights_only=True), which refuses anything but tensors.
Writes the same name with .safetensors beside it (or --output).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("weights", help="torch-fidelity's pt_inception-2015-12-05-*.pth")
    p.add_argument("--output", default=None, help="target .safetensors (default: beside the input)")
    args = p.parse_args(argv)
    source = Path(args.weights)
    state = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SystemExit(f"{source} is not a plain state dict of tensors")
    target = Path(args.output) if args.output else source.with_suffix(".safetensors")
    tmp = target.with_name(target.name + ".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    tmp.replace(target)
    print(f"{len(state)} tensors → {target}")
    return target


if __name__ == "__main__":
    main()
