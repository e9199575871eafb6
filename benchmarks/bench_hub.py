"""ViT-B/16 (keras-hub, random weights): camcli end to end vs the forward pass alone, and the
cost of the attention methods relative to Grad-CAM, measured side by side in one run.

    .venv/bin/python benchmarks/bench_hub.py                  # 32 images, batch 16
    .venv/bin/python benchmarks/bench_hub.py --images 16

The model is ``keras_hub.models.ViTBackbone`` at ViT-B/16's size (12 blocks, 768 wide, 12
heads, 224x224) with random weights (speed does not depend on the weights' values; nothing is
downloaded). Every row goes through camcli's own engine, compiled and warmed up first:

- forward: the model's logits alone (``Engine.scores``), the floor any explainer pays;
- gradcam / layercam: forward + one backward pass to the default layer (the last block's input)
  and the map; ``end to end`` for gradcam also decodes, writes the overlay and the JSON record
  (``camcli.api.explain`` over files, as ``camcli explain`` does);
- rollout: forward with every block's attention probabilities captured (12 x 12 heads x 197 x
  197 per image), rolled out on the CPU;
- grad-rollout: the same plus the backward pass to every attention map;
- legrad: the same backward pass, the gradients averaged (no matrix products).

Each ratio is images/s of the row over the forward pass's; the forward pass is timed again
between rows and the mean of its rates around each row is used.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def build_vit(folder: Path) -> Path:
    import keras_hub

    backbone = keras_hub.models.ViTBackbone(
        image_shape=(224, 224, 3), patch_size=16, num_layers=12, num_heads=12, hidden_dim=768,
        mlp_dim=3072)
    model = keras_hub.models.ViTImageClassifier(backbone=backbone, num_classes=1000,
                                                preprocessor=None)
    path = folder / "vit_b16.keras"
    model.save(str(path))
    return path


def best_rate(run, images: np.ndarray, batch: int, repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(images), batch):
            run(images[i : i + batch])
        best = min(best, time.perf_counter() - start)
    return len(images) / best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)

    from bench_methods import photo_like

    from camcli import loading
    from camcli.engine import Engine, Targets
    from camcli.precision import cpu_flags

    folder = Path(tempfile.mkdtemp(prefix="bench-hub-"))
    path = build_vit(folder)
    loaded = loading.load(str(path))
    pixels = photo_like(args.images, loaded.input_size)
    images = pixels.astype(np.float32) / 255.0
    isa = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in cpu_flags())
    print(f"# ViT-B/16 random weights, layer {loaded.layer_path}, {args.images} images, batch "
          f"{args.batch_size}; {platform.machine()}, {os.cpu_count()} cores, ISA: {isa}; "
          f"load average {os.getloadavg()[0]:.2f}")
    forward = Engine(loaded, Targets(), "gradcam")
    forward.scores(images[:2])
    rates = {"forward": [best_rate(forward.scores, images, args.batch_size)]}
    rows = {}
    for method in ("gradcam", "layercam", "rollout", "grad-rollout", "legrad"):
        engine = Engine(loaded, Targets(), method)
        engine.run(images[:2])
        rows[method] = best_rate(engine.run, images, args.batch_size)
        rates["forward"].append(best_rate(forward.scores, images, args.batch_size))
    rows["gradcam end to end"] = end_to_end(path, pixels, folder, args.batch_size)
    rates["forward"].append(best_rate(forward.scores, images, args.batch_size))
    print("\n| run | images/s | × forward pass | × gradcam |\n| --- | ---: | ---: | ---: |")
    floor = rates["forward"]
    print(f"| forward pass alone | {np.mean(floor):.2f} | 1.00 | |")
    for i, (name, rate) in enumerate(rows.items()):
        around = (floor[i] + floor[i + 1]) / 2
        print(f"| {name} | {rate:.2f} | {rate / around:.2f} | {rate / rows['gradcam']:.2f} |")


def end_to_end(path: Path, pixels: np.ndarray, folder: Path, batch: int) -> float:
    """images/s of camcli.api.explain over PNG files: decode, explain, overlay, record."""
    from PIL import Image

    from camcli.api import Explainer, OutputOptions

    inputs = folder / "in"
    inputs.mkdir()
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(inputs / f"{i:03d}.png")
    explainer = Explainer(str(path), batch_size=batch)
    explainer.explain_arrays(pixels[:2])  # trace once
    best = float("inf")
    for attempt in range(2):
        out = OutputOptions(out_dir=folder / f"out{attempt}")
        start = time.perf_counter()
        results = list(explainer.run([str(inputs)], out))
        best = min(best, time.perf_counter() - start)
        failed = [r.to_json() for r in results if not r.to_json().get("ok")]
        if len(results) != len(pixels) or failed:
            raise SystemExit(f"end to end: {len(results)} results, failures: {failed[:1]}")
    return len(pixels) / best


if __name__ == "__main__":
    main()
