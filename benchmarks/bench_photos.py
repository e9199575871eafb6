"""Phone photos at the model's speed: 12-megapixel JPEGs, ResNet50 float32, default settings.

    .venv/bin/python benchmarks/bench_photos.py                  # 24 photos, 3 interleaved rounds
    .venv/bin/python benchmarks/bench_photos.py --photos 32 --rounds 5

The photos are the sample photos upscaled to 4032×3024 with a little grain (a real photo's noise
makes its overlays larger than a smooth upscale's), saved as JPEG quality 92 (~2.4 MB each).
Each round measures, side by side and interleaved so that the machine's load hits all alike:

- F: ResNet50's compiled forward pass alone (``weights=None``, batch 16), on the model's input;
- E: camcli end to end through the Python API, warm engine, default settings (overlays capped
  at 1,024 px), and E0 with ``max_overlay_side=0`` (full-resolution overlays, as before);
- R: the output side alone (decode, draw, encode, write) with the default cap, on every core.

It prints medians over the rounds, the ratios E/F (goal ≥ 0.5), the default overlay's size
(goal ≤ 1.5 MB), the ISA and the load average with every figure. ``--cores`` then runs the same
E and R in child processes pinned with ``taskset`` to 1 and to 2 cores (interleaved) to show how
the throughput scales with the cores.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import load, machine  # noqa: E402
from bench_explain import (  # noqa: E402
    api_rate,
    clean_outputs,
    forward_rate,
    output_rate,
    sample_photos,
)

ROOT = Path(__file__).resolve().parents[1]
PHONE = (4032, 3024)


def make_photos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    sources = sample_photos()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        if i < len(sources):
            big = np.asarray(sources[i].resize(PHONE, Image.Resampling.BICUBIC), np.int16)
            grain = rng.normal(0, 3, big.shape)
            buffer = io.BytesIO()
            Image.fromarray(np.clip(big + grain, 0, 255).astype(np.uint8)).save(
                buffer, "JPEG", quality=92)
            data = buffer.getvalue()
        else:  # the same photos again, under other names (decoding cost is the same)
            data = paths[i % len(sources)].read_bytes()
        path = folder / f"photo{i:03d}.jpg"
        path.write_bytes(data)
        paths.append(path)
    return paths


def overlay_sizes(folder: Path) -> list[int]:
    return [p.stat().st_size for p in folder.glob("*.cam.png")]


def measure(explainer, paths, folder: Path, work: Path, full: bool):
    """One round: F, E, R (and E0 with ``full``); rates in photos/s with the load of each."""
    from camcli.pipeline import OutputOptions

    layer_hw = tuple(explainer.loaded.layer.output.shape[1:3])
    row = {}
    row["F"] = (forward_rate(explainer, paths, explainer.batch_size), load())
    row["E"] = (api_rate(explainer, folder)[0], load())
    row["overlay_bytes"] = overlay_sizes(folder)
    row["R"] = (output_rate(paths, work / "r-out", layer_hw), load())
    if full:
        row["E0"] = (api_rate(explainer, folder, OutputOptions(max_overlay_side=0))[0], load())
        row["overlay0_bytes"] = overlay_sizes(folder)
    clean_outputs(folder)
    return row


def child(args) -> int:
    """``--child``: one E and one R measurement on the cores this process is pinned to."""
    from camcli.api import Explainer
    from camcli.runner import usable_cores

    work = Path(args.child)
    paths = sorted((work / "photos").glob("photo*.jpg"))
    explainer = Explainer(model=args.model, weights="none", batch_size=16)
    row = measure(explainer, paths, work / "photos", work, full=False)
    print(json.dumps({"cores": usable_cores(), "E": row["E"][0], "R": row["R"][0],
                      "F": row["F"][0], "load": row["E"][1]}))
    return 0


def cores(args, work: Path) -> None:
    """E and R pinned to 1 core and to 2, interleaved, in child processes."""
    results: dict[str, list[dict]] = {"0": [], "0,1": []}
    for _ in range(args.rounds):
        for cpus in results:
            out = subprocess.run(
                ["taskset", "-c", cpus, sys.executable, __file__, "--child", str(work),
                 "--model", args.model],
                capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
            )
            if out.returncode != 0:
                print(f"taskset -c {cpus}: failed: {out.stderr[-300:]}")
                return
            results[cpus].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("\nCores (taskset; medians; photos/s):\n")
    print("| cores | F forward | E end to end | R output side | E / F | load |")
    print("| --- | --- | --- | --- | --- | --- |")
    medians = {}
    for cpus, runs in results.items():
        m = {k: float(np.median([r[k] for r in runs])) for k in ("F", "E", "R")}
        medians[cpus] = m
        print(f"| {runs[0]['cores']} | {m['F']:.2f} | {m['E']:.2f} | {m['R']:.2f} | "
              f"{m['E'] / m['F']:.2f} | {runs[-1]['load']} |")
    one, two = medians["0"], medians["0,1"]
    print(f"\n2 cores / 1 core: E {two['E'] / one['E']:.2f}×, R {two['R'] / one['R']:.2f}×, "
          f"F {two['F'] / one['F']:.2f}×; output side per photo: "
          f"{1000 / one['R']:.0f} core-ms (1 core), {2000 / two['R']:.0f} core-ms (2 cores)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--cores", action="store_true",
                        help="also compare 1 and 2 cores with taskset")
    parser.add_argument("--cores-only", action="store_true",
                        help="only the taskset comparison")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(ROOT))
    from camcli.tfimport import import_quietly

    import_quietly()
    if args.child:
        return child(args)
    from camcli.api import Explainer

    work = Path(tempfile.mkdtemp(prefix="camcli-photos-"))
    try:
        paths = make_photos(work / "photos", args.photos)
        mb = np.mean([p.stat().st_size for p in paths]) / 1e6
        print(f"{len(paths)} JPEGs of {PHONE[0]}×{PHONE[1]} (mean {mb:.2f} MB); {args.model}, "
              f"weights=None, float32, batch 16\n{machine()}\n")
        if args.cores_only:
            cores(args, work)
            return 0
        explainer = Explainer(model=args.model, weights="none", batch_size=16)
        rows = [measure(explainer, paths, work / "photos", work, full=True)
                for _ in range(args.rounds)]
        print("| round | F forward | E end to end | E0 full-size overlays | R output side | "
              "E / F | E0 / F | load (at E) |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for i, row in enumerate(rows, 1):
            f, e, e0, r = (row[k][0] for k in ("F", "E", "E0", "R"))
            print(f"| {i} | {f:.2f} | {e:.2f} | {e0:.2f} | {r:.2f} | {e / f:.2f} | "
                  f"{e0 / f:.2f} | {row['E'][1]} |")
        med = {k: float(np.median([row[k][0] for row in rows])) for k in ("F", "E", "E0", "R")}
        ratio = float(np.median([row["E"][0] / row["F"][0] for row in rows]))
        sizes = np.array(rows[0]["overlay_bytes"]) / 1e6
        full_sizes = np.array(rows[0]["overlay0_bytes"]) / 1e6
        print(f"| median | {med['F']:.2f} | {med['E']:.2f} | {med['E0']:.2f} | {med['R']:.2f} | "
              f"{ratio:.2f} | {med['E0'] / med['F']:.2f} | |\n")
        print("Goals:")
        print(f"  end to end ≥ 0.5 × F (median of the per-round ratios)  {ratio:5.2f}  "
              f"{'met' if ratio >= 0.5 else 'MISSED'}")
        print(f"  default overlay ≤ 1.5 MB (largest of {len(sizes)})           "
              f"{sizes.max():5.2f}  {'met' if sizes.max() <= 1.5 else 'MISSED'}")
        print(f"  (overlay mean {sizes.mean():.2f} MB; full-size overlays mean "
              f"{full_sizes.mean():.2f} MB)")
        if args.cores:
            cores(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
