"""How fast is each CAM method, relative to Grad-CAM, measured side by side in one run.

    .venv/bin/python benchmarks/bench_methods.py                  # resnet50, 32 images
    .venv/bin/python benchmarks/bench_methods.py --images 16 --scorecam-images 1
    .venv/bin/python benchmarks/bench_methods.py --methods shapleycam fullgrad   # some only
    .venv/bin/python benchmarks/bench_methods.py --methods sscam --method-option samples=4

Every method goes through camcli's own :class:`~camcli.engine.Engine` (compiled, warmed up on one
image first, so tracing is not timed) on the same deterministic photo-like images: random crops
of ``sample_images/`` resized to the model's input and preprocessed as camcli does. The model is
built with ``weights=None`` (speed does not depend on the weights' values; nothing is
downloaded). Images go through in batches of ``--batch-size`` (16), as ``camcli explain`` does.

Score-CAM without ``--scorecam-channels`` runs one forward pass of the whole network per channel
of the target layer (2048 for resnet50) and per image, so it is timed on fewer images
(``--scorecam-images``, default 2); images/s is a rate, so it stays comparable. Grad-CAM is
timed again after every method and each ratio uses the Grad-CAM rates just before and after
that method, so a machine whose load changes during the run skews the ratios less.

Every method of ``camcli.methods.METHODS`` is timed (methods added to the table are picked up),
but the attention methods, which need a transformer: ``bench_hub.py`` times those on a ViT;
``--methods`` times some only, still each beside Grad-CAM; ``--method-option NAME=VALUE`` sets
the timed methods' own options (as ``camcli explain --method-option``; each must be an option of
every method timed).

Prints a Markdown table: method, images timed, seconds, images/s, the Grad-CAM rate around it,
and the ratio. Takes about 8 minutes on 2 cores (Score-CAM dominates).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def photo_like(count: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """``count`` RGB uint8 arrays: random crops (50-100 % of each side) of the sample photos."""
    rng = np.random.default_rng(seed)
    photos = [Image.open(p).convert("RGB") for p in sorted((ROOT / "sample_images").iterdir())
              if p.suffix.lower() in (".png", ".jpg", ".jpeg")]
    if not photos:
        raise SystemExit("no photos in sample_images/")
    height, width = size
    out = np.empty((count, height, width, 3), np.uint8)
    for i in range(count):
        photo = photos[i % len(photos)]
        w, h = photo.size
        cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = photo.crop((x0, y0, x0 + cw, y0 + ch)).resize((width, height), Image.BILINEAR)
        out[i] = np.asarray(crop)
    return out


def time_engine(engine, images: np.ndarray, batch_size: int, repeats: int) -> float:
    """Best wall time (s) of ``repeats`` passes over ``images`` in batches of ``batch_size``."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for start in range(0, len(images), batch_size):
            engine.run(images[start : start + batch_size])
        best = min(best, time.perf_counter() - started)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--scorecam-images", type=int, default=2,
                        help="images for Score-CAM over every channel (the slow one; 0: "
                             "time Score-CAM and its variants on 64 channels only)")
    parser.add_argument("--methods", nargs="+", metavar="NAME",
                        help="time only these methods (default: every method of the table)")
    parser.add_argument("--method-option", nargs="+", default=[], metavar="NAME=VALUE",
                        help="the timed methods' own options, as camcli explain takes them")
    parser.add_argument("--repeats", type=int, default=3,
                        help="passes per method (best kept); methods slower than 30 s: one")
    args = parser.parse_args(argv)

    from camcli.tfimport import import_quietly

    import_quietly()
    import tensorflow as tf

    from camcli.engine import Engine, Targets
    from camcli.loading import load
    from camcli.methods import METHODS, get_method, parse_method_options

    loaded = load(args.model, weights="none")
    height, width = loaded.input_size
    channels = int(loaded.layer.output.shape[-1])
    images = loaded.preprocess(photo_like(args.images, (height, width)).astype(np.float32))

    cases = []
    chosen = ([get_method(name).name for name in args.methods] if args.methods
              else [name for name, method in METHODS.items() if not method.needs_attention])
    for name in chosen:
        method = METHODS[name].configure(**parse_method_options(name, args.method_option))
        if args.method_option:
            name = f"{name} {' '.join(args.method_option)}"
        if hasattr(method, "channels"):  # Score-CAM: every channel, and the 64 of most variance
            cases.append((f"{name} --scorecam-channels 64", method.configure(channels=64),
                          args.images))
            if args.scorecam_images > 0:  # 0: the 64 channels only
                cases.append((f"{name} (all {channels} channels)", method,
                              min(args.scorecam_images, args.images)))
        else:
            cases.append((name, method, args.images))

    print(f"# camcli method speed: {args.model} (weights=None), input {height}x{width}, "
          f"layer {loaded.layer_path} ({channels} channels), batch {args.batch_size}",
          file=sys.stderr)
    from camcli.precision import cpu_flags

    isa = sorted(cpu_flags() & {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16",
                                "avx512_fp16", "amx_bf16"})
    print(f"# {platform.processor() or platform.machine()} ({' '.join(isa) or 'no AVX2'}), "
          f"{os.cpu_count()} cores, "
          f"TensorFlow {tf.__version__}; load average {os.getloadavg()[0]:.2f}", file=sys.stderr)

    def warm(method):
        engine = Engine(loaded, Targets(), method, compiled=True)
        # Trace every compiled function on one image. Score-CAM over every channel would run
        # thousands of forward passes for that: trace it with one channel instead (the traces
        # do not depend on the option), then time it with its real options.
        engine.method = method.configure(channels=1)
        engine.run(images[:1])
        engine.method = method
        return engine

    def measure(engine, count):
        subset = images[:count]
        seconds = time_engine(engine, subset, args.batch_size, repeats=1)
        if seconds < 30 and args.repeats > 1:
            seconds = min(seconds, time_engine(engine, subset, args.batch_size, args.repeats - 1))
        return seconds

    # Grad-CAM is timed again after every method: each ratio uses the Grad-CAM rates measured
    # just before and just after it, so a machine whose load changes during the run (shared
    # CPUs) skews the ratios less than it skews the absolute rates.
    reference = warm(get_method("gradcam"))
    gradcam_rates = [args.images / measure(reference, args.images)]
    rows = []
    for label, method, count in cases:
        seconds = measure(warm(method), count)
        gradcam_rates.append(args.images / measure(reference, args.images))
        around = (gradcam_rates[-2] + gradcam_rates[-1]) / 2
        rows.append((label, count, seconds, count / seconds, around))
        print(f"{label}: {count} images in {seconds:.2f}s (gradcam around it: {around:.2f}/s)",
              file=sys.stderr)

    print(f"\n{args.model}, CPU ({os.cpu_count()} cores), batch {args.batch_size}, weights=None. "
          "Ratio: the method's images/s over the mean Grad-CAM rate measured just before and "
          f"after it (Grad-CAM ranged {min(gradcam_rates):.2f}-{max(gradcam_rates):.2f} images/s "
          f"over the run; load average at the end {os.getloadavg()[0]:.2f}).\n")
    print("| method | images timed | seconds | images/s | gradcam images/s around it "
          "| relative to gradcam |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, count, seconds, rate, around in rows:
        print(f"| {label} | {count} | {seconds:.2f} | {rate:.3g} | {around:.2f} "
              f"| {rate / around:.3g} |")


if __name__ == "__main__":
    main()
