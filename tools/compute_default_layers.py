"""Compute each registry model's default Grad-CAM layer and compare it with the stored one.

Run by hand after adding or changing registry entries, then copy the names into
``camcli/registry.py``::

    python tools/compute_default_layers.py            # all models, 2 at a time
    python tools/compute_default_layers.py 'mobilenet_v3*' --jobs 1

Rule: the last layer, in ``model.layers`` order, whose output is 4-D (batch, height, width,
channels) with height > 1 and width > 1. The "> 1" matters: heads such as MobileNet's reshape the
pooled features to 1x1 maps and convolve them, and a 1x1 map cannot localise anything.

Each model is built with ``weights=None`` at its registry input size, in its own subprocess, so
memory stays bounded and auto-generated layer names are those of a fresh process. Exits 1 if any
computed layer differs from the stored one.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def last_spatial_layer(model) -> tuple[str, list]:
    """Name and output shape of the last layer with a 4-D output larger than 1x1."""
    found = None
    for layer in model.layers:
        shape = getattr(layer.output, "shape", None)  # a list/tuple output has no shape
        if shape is not None and len(shape) == 4 and shape[1] > 1 and shape[2] > 1:
            found = (layer.name, list(shape[1:]))
    if found is None:
        raise SystemExit("no layer with a spatial 4-D output")
    return found


def compute_one(name: str) -> dict:
    """Build one model (in this process) and report its computed and stored default layer."""
    from camcli import registry

    spec = registry.get_spec(name)
    start = time.perf_counter()
    model = spec.build(weights=None)
    layer, shape = last_spatial_layer(model)
    return {
        "name": spec.name,
        "input_size": list(spec.input_size),
        "computed": layer,
        "shape": shape,
        "stored": spec.default_layer,
        "seconds": round(time.perf_counter() - start, 1),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    }


def run_in_subprocess(name: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, __file__, "--one", name],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"name": name, "error": tail}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pattern", nargs="?", help="fnmatch filter on model names")
    parser.add_argument("--jobs", type=int, default=2, help="models built at once (default 2)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child mode: one model, JSON out
    args = parser.parse_args()

    if args.one:
        print(json.dumps(compute_one(args.one)))
        return 0

    sys.path.insert(0, str(ROOT))
    from camcli import registry

    names = [spec.name for spec in registry.list_models(args.pattern)]
    start = time.perf_counter()
    bad = 0
    print(f"{'model':42} {'size':>9} {'default layer':28} {'output':>16} {'s':>5} {'MB':>5}")
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for row in pool.map(run_in_subprocess, names):
            if "error" in row:
                bad += 1
                print(f"{row['name']:42} ERROR {row['error']}")
                continue
            mark = "" if row["computed"] == row["stored"] else f"  <-- stored {row['stored']!r}"
            bad += bool(mark)
            size = "x".join(map(str, row["input_size"]))
            shape = "x".join(map(str, row["shape"]))
            print(
                f"{row['name']:42} {size:>9} {row['computed']:28} {shape:>16} "
                f"{row['seconds']:5.1f} {row['peak_rss_mb']:5d}{mark}"
            )
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
    elapsed = time.perf_counter() - start
    print(f"{len(names)} models, {bad} mismatched /failed, {elapsed:.0f}s; peak {peak} MB")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
