"""Is the Ray engine as fast as a local run on one machine? Measured side by side, one run.

    .venv/bin/python benchmarks/bench_ray.py                    # 96 images, ResNet50
    .venv/bin/python benchmarks/bench_ray.py --model mobilenet_v1_0.25_224 --weights imagenet

The same 96 JPEGs (0.3 megapixels, photo-like) are explained by the real ``camcli explain``
command, three ways, each writing its outputs to its own folder:

- local: ``--engine local`` (the reference);
- ray 1×2: ``--engine ray --ray-workers 1 --ray-cpus 2``, one worker holding both cores, on a
  local Ray instance the command starts for the run (no ``--ray-address``);
- ray 2×1: two workers of one CPU each (how the rate scales with workers on this machine).

Each command's ``--json`` lines are timestamped as they arrive. **Start-up** is the time to the
first line (importing, starting Ray, loading the model, the first batch); the **marginal
rate** is the images after each worker's first batch over the time they took — what the run
costs per image once going, the figure that decides a long run. Each way runs twice,
interleaved; the better run is kept. The goal: ray 1×2 at least 0.8 × the local marginal rate.

The runs happen in a network namespace of their own when the OS allows (root, or user
namespaces): Ray then listens on loopback only, as in the tests (tests/netns.py).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
CAMCLI = Path(sys.executable).with_name("camcli")


def _images(count: int, folder: Path) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(count):
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)  # smooth, photo-like
        picture = Image.fromarray(small).resize((640, 480), Image.Resampling.BICUBIC)
        noise = rng.normal(0, 8, (480, 640, 3))
        pixels = np.clip(np.asarray(picture, dtype=np.float64) + noise, 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"img{i:03d}.jpg", quality=90)


def _run(args: list[str], cwd: Path, batch: int) -> dict:
    """One command; seconds to the first --json line and the marginal rate after the first
    batch of each worker (``batch``: that many images; their work precedes the clock)."""
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_ADDRESS="",
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    started = time.perf_counter()
    process = subprocess.Popen([str(CAMCLI), "explain", *args, "--json", "--quiet"], cwd=cwd,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    arrivals = [time.perf_counter() - started for _ in iter(process.stdout.readline, "")]
    stderr = process.stderr.read()
    if process.wait() != 0:
        sys.exit(f"camcli {' '.join(args)} failed ({process.returncode}):\n{stderr}")
    after = arrivals[batch - 1:]
    rate = (len(after) - 1) / (after[-1] - after[0]) if len(after) > 1 else float("nan")
    return {"startup": arrivals[0], "rate": rate, "total": arrivals[-1], "images": len(arrivals)}


def driver_memory(counts=(100_000, 1_000_000)) -> None:
    """The driver's resident memory while it lists N inputs window by window into the object
    store (the part of a run that grows with N: rows are shown and dropped), for two N."""
    import ray

    from camcli.distributed.ray import _put_blocks, _windows, window_size

    def rss() -> int:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status
                        if line.startswith("VmRSS"))

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=1024**3)
    print(f"\ndriver memory while listing (window: {window_size(1, 16):,} inputs, batch 16)")
    print(f"{'inputs':>10s} {'peak RSS MB':>12s} {'growth MB':>10s} {'s':>6s}")
    for count in counts:
        base = peak = rss()
        started = time.perf_counter()
        paths = (f"s3://bucket/photos/2024/{i:09d}.jpg" for i in range(count))
        for window in _windows(paths, window_size(1, 16)):
            blocks, _ = _put_blocks(ray, window, 16)
            peak = max(peak, rss())
            del blocks, window
        print(f"{count:>10,} {peak / 1e6:12.0f} {(peak - base) / 1e6:10.0f} "
              f"{time.perf_counter() - started:6.1f}")
    ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--weights", default="none")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--driver-memory", action=argparse.BooleanOptionalAction, default=True,
                        help="Also measure the driver's memory listing 100k and 1M inputs.")
    options = parser.parse_args()

    import netns

    isolation = netns.enter()
    print(f"network: {'own namespace, loopback only' if isolation is None else isolation}")
    work = Path(tempfile.mkdtemp(prefix="camcli-bench-ray-"))
    _images(options.images, work / "in")
    common = ["in", "--model", options.model, "--weights", options.weights,
              "--batch-size", str(options.batch_size)]
    ways = {
        "local": ["--engine", "local"],
        "ray 1×2": ["--engine", "ray", "--ray-workers", "1", "--ray-cpus", "2"],
        "ray 2×1": ["--engine", "ray", "--ray-workers", "2", "--ray-cpus", "1"],
    }
    best: dict[str, dict] = {}
    for attempt in range(2):
        for name, extra in ways.items():
            out = f"out-{name.replace(' ', '').replace('×', 'x')}-{attempt}"
            workers = int(extra[extra.index("--ray-workers") + 1]) if "ray" in name else 1
            measured = _run([*common, *extra, "--out-dir", out], work,
                            workers * options.batch_size)
            print(f"  {name:8s} run {attempt + 1}: start-up {measured['startup']:5.1f} s, "
                  f"{measured['rate']:5.2f} img/s after the first batch", flush=True)
            if name not in best or measured["rate"] > best[name]["rate"]:
                best[name] = measured
    local = best["local"]["rate"]
    print(f"\n{options.images} images, {options.model} (weights {options.weights}), "
          f"batch {options.batch_size}, {os.cpu_count()} CPUs; best of 2")
    print(f"{'engine':10s} {'start-up s':>10s} {'img/s':>7s} {'× local':>8s} {'total s':>8s}")
    for name, measured in best.items():
        print(f"{name:10s} {measured['startup']:10.1f} {measured['rate']:7.2f} "
              f"{measured['rate'] / local:8.2f} {measured['total']:8.1f}")
    ratio = best["ray 1×2"]["rate"] / local
    print(f"\ngoal: ray 1×2 ≥ 0.80 × local marginal rate: {ratio:.2f} × — "
          f"{'met' if ratio >= 0.8 else 'NOT met'}")
    if options.driver_memory:
        driver_memory()


if __name__ == "__main__":
    main()
