"""How fast is `camcli explain`, measured against its own limits and the field, in one run.

    .venv/bin/python benchmarks/bench_explain.py                 # resnet50 and mobilenet_v2
    .venv/bin/python benchmarks/bench_explain.py --models resnet50 --images 64

Everything is measured side by side in one process and run, on the same deterministic
photo-like images (crops and resizes of the sample photos, 0.1-0.8 megapixels, JPEG), with
``weights=None`` models (speed does not depend on the weights' values):

- F: the model's forward pass alone, compiled, batch 16 (the ceiling for the compute part);
- R: the output side alone, no model: decode + render + encode + write, on all cores;
- ideal = 1 / (1/F + 1/R): both halves share the same cores on a CPU machine;
- the classic per-image Keras recipe (PIL load, eager GradientTape Grad-CAM, jet overlay PNG,
  top-5 JSON, one image at a time);
- tf-keras-vis' Gradcam, batch 16, compute only (skipped with a note if not installed);
- camcli end to end through the Python API (warm engine), and through the CLI as the marginal
  rate between a small and a large run, so start-up does not count; the CLI's peak RSS;
- start-up: `camcli --help`, and `camcli explain one.jpg` with a local weights file;
- with ``--precision bfloat16`` (``--precisions`` to choose): the forward pass, the API and the
  CLI again, side by side in the same run, against the same float32 F.

It prints a table of images/s, the goal ratios and a per-stage breakdown of the API run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import bf16_native, load, machine, run_measured  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CAMCLI = [sys.executable, "-m", "camcli.cli"]


# --------------------------------------------------------------------------- inputs


def sample_photos() -> list[Image.Image]:
    """The sample photos, RGB, in name order."""
    return [Image.open(p).convert("RGB") for p in sorted((ROOT / "sample_images").glob("*.*"))
            if p.suffix.lower() in (".png", ".jpg")]


def make_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """Deterministic photo-like JPEGs: random crops of the sample photos, 0.1-0.8 megapixels."""
    rng = np.random.default_rng(seed)
    photos = sample_photos()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        photo = photos[i % len(photos)]
        width, height = photo.size
        cw, ch = int(width * rng.uniform(0.5, 1.0)), int(height * rng.uniform(0.5, 1.0))
        x0, y0 = int(rng.integers(0, width - cw + 1)), int(rng.integers(0, height - ch + 1))
        crop = photo.crop((x0, y0, x0 + cw, y0 + ch))
        megapixels = rng.uniform(0.1, 0.8)
        scale = (megapixels * 1e6 / (cw * ch)) ** 0.5
        crop = crop.resize((max(1, int(cw * scale)), max(1, int(ch * scale))), Image.BILINEAR)
        path = folder / f"img{i:04d}.jpg"
        crop.save(path, quality=90)
        paths.append(path)
    return paths


def clean_outputs(folder: Path) -> None:
    from camcli.outputs import is_camcli_output

    for path in folder.iterdir():
        if is_camcli_output(path.name):
            path.unlink()


# --------------------------------------------------------------------------- measurements


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def forward_rate(explainer, paths, batch: int) -> float:
    """F: compiled forward pass only, on preprocessed arrays."""
    import tensorflow as tf

    from camcli import images

    loaded = explainer.loaded
    height, width = loaded.input_size
    pixels = np.stack([images.read_for_model(p, (height, width)).pixels for p in paths])
    x = explainer.preprocess(pixels)
    model = loaded.model
    forward = tf.function(
        lambda t: model(t, training=False),
        input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32)],
    )
    forward(x[:batch]).numpy()

    def run():
        for i in range(0, len(x), batch):
            forward(x[i : i + batch]).numpy()

    return len(x) / timed(run)


def output_rate(paths, out: Path, layer_hw: tuple[int, int], fmt: str = "png") -> float:
    """R: everything camcli does per image except the model (default overlay size), on every
    core this process may use."""
    from camcli import images, render
    from camcli.heatmaps import map_stats
    from camcli.outputs import OutputPaths, atomic_write, to_json_bytes
    from camcli.runner import usable_cores

    rng = np.random.default_rng(1)
    cams = rng.random((len(paths), *layer_hw)).astype(np.float32)

    def one(i: int) -> None:
        item = images.read_for_model(paths[i], (224, 224),
                                     overlay_side=render.DEFAULT_MAX_OVERLAY_SIDE)
        picture = render.overlay(item.picture, cams[i])
        names = OutputPaths.for_input(paths[i], out)
        atomic_write(names.overlay(0, "x", False, fmt), render.encode(picture, fmt))
        stats = map_stats(cams[i], *item.size).to_json()
        atomic_write(names.record, to_json_bytes({"stats": stats}))

    with ThreadPoolExecutor(usable_cores()) as pool:
        seconds = timed(lambda: list(pool.map(one, range(len(paths)))))
    return len(paths) / seconds


def recipe_rate(model_name: str, paths, out: Path) -> float:
    """The classic Keras Grad-CAM recipe, one image at a time, eager."""
    import keras
    import tensorflow as tf

    from camcli import registry, render

    spec = registry.get_spec(model_name)
    model = spec.build(weights=None)
    preprocess = spec.preprocess_input()
    grad_model = keras.Model(model.inputs, [model.get_layer(spec.default_layer).output,
                                            model.output])
    lut = render.colormap("jet")
    out.mkdir(parents=True, exist_ok=True)

    def one(path: Path) -> None:
        img = keras.utils.load_img(path, target_size=spec.input_size)
        array = preprocess(np.expand_dims(keras.utils.img_to_array(img), 0))
        with tf.GradientTape() as tape:
            activations, preds = grad_model(array)
            index = int(tf.argmax(preds[0]))
            score = preds[:, index]
        grads = tape.gradient(score, activations)
        weights = tf.reduce_mean(grads, axis=(0, 1, 2))
        heatmap = tf.maximum(activations[0] @ weights[..., tf.newaxis], 0)[..., 0]
        heatmap = (heatmap / (tf.reduce_max(heatmap) + 1e-12)).numpy()
        original = keras.utils.load_img(path)
        colour = Image.fromarray(lut[np.uint8(255 * heatmap)]).resize(original.size)
        Image.blend(original, colour, 0.4).save(out / f"{path.name}.png")
        top5 = np.argsort(-preds[0].numpy())[:5]
        (out / f"{path.name}.json").write_text(json.dumps([int(i) for i in top5]))

    one(paths[0])  # the first call builds Keras' internal state; not timed
    return (len(paths) - 1) / timed(lambda: [one(p) for p in paths[1:]])


def tfkerasvis_rate(model_name: str, paths, batch: int) -> float | None:
    """tf-keras-vis' Gradcam on preprocessed batches, compute only."""
    try:
        from tf_keras_vis.gradcam import Gradcam
        from tf_keras_vis.utils.scores import CategoricalScore
    except ImportError:
        return None
    from camcli import images, registry

    spec = registry.get_spec(model_name)
    model = spec.build(weights=None)
    pixels = np.stack([images.read_for_model(p, spec.input_size).pixels for p in paths])
    x = spec.preprocess_input()(pixels.astype(np.float32))
    gradcam = Gradcam(model, clone=True)
    top1 = np.argmax(model.predict(x, verbose=0), axis=1)

    def run(n: int):
        for i in range(0, n, batch):
            score = CategoricalScore(list(top1[i : i + batch]))
            gradcam(score, x[i : i + batch], penultimate_layer=spec.default_layer)

    run(batch)  # warm-up
    return len(x) / timed(lambda: run(len(x)))


def api_rate(explainer, folder: Path, options=None):
    """camcli end to end through the Python API with a warm engine (default output options
    unless ``options``); returns (rate, stats, seconds)."""
    from camcli.api import RunStats

    height, width = explainer.loaded.input_size
    warm = np.zeros((explainer.batch_size, height, width, 3), np.uint8)
    explainer.explain_arrays(warm, compiled=True)  # trace once, outside the timing
    stats = RunStats()
    clean_outputs(folder)
    start = time.perf_counter()
    results = list(explainer.run([str(folder)], options, stats=stats))
    seconds = time.perf_counter() - start
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    return len(results) / seconds, stats, seconds


def run_cli(args: list[str]) -> tuple[float, float]:
    """Run the CLI; returns (wall seconds, peak RSS in GB) of that process alone."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    code, seconds, peak, errors = run_measured(CAMCLI + args, env=env, cwd=ROOT)
    if code != 0:
        raise RuntimeError(f"camcli {' '.join(args)} failed: {errors[-500:]}")
    return seconds, peak / 2**30


def cli_rate(model: str, small: Path, large: Path, n_small: int, n_large: int, repeats: int = 2,
             extra: tuple[str, ...] = ()):
    """Marginal CLI throughput between two run sizes (best of ``repeats`` each, so start-up
    noise cancels), and the larger run's peak RSS."""
    common = ["--model", model, "--weights", "none", "-q", *extra]
    times = {small: [], large: []}
    rss = 0.0
    for _ in range(repeats):
        for folder in (small, large):
            clean_outputs(folder)
            seconds, peak = run_cli(["explain", str(folder), *common])
            times[folder].append(seconds)
            rss = max(rss, peak)
    return (n_large - n_small) / (min(times[large]) - min(times[small])), rss


# --------------------------------------------------------------------------- report


def compute_rate(explainer, pixels: np.ndarray, batch: int) -> float:
    """G: camcli's engine alone (forward, gradients and the map), compiled, on decoded pixels."""
    explainer.explain_arrays(pixels[:batch], compiled=True)  # trace once, outside the timing

    def run():
        for i in range(0, len(pixels), batch):
            explainer.explain_arrays(pixels[i : i + batch], compiled=True)

    return len(pixels) / timed(run)


def interleaved_rates(explainers: dict, paths, folder: Path, rounds: int) -> dict:
    """precision -> medians of F (forward), G (engine) and api (end to end) over ``rounds``
    rounds, each round measuring every precision in turn, so load hits them alike; also the
    per-round rates with the load average, and the last float32 API run's stage times."""
    from camcli import images

    size = tuple(explainers["float32"].loaded.input_size)
    pixels = np.stack([images.read_for_model(p, size).pixels for p in paths])
    per_round = {precision: [] for precision in explainers}
    stats = seconds = None
    for _ in range(rounds):
        for precision, explainer in explainers.items():
            batch = explainer.batch_size
            api, run_stats, run_seconds = api_rate(explainer, folder)
            if precision == "float32":
                stats, seconds = run_stats, run_seconds
            per_round[precision].append(dict(
                F=forward_rate(explainer, paths, batch), G=compute_rate(explainer, pixels, batch),
                api=api, load=load()))
    medians = {
        precision: {k: float(np.median([r[k] for r in runs])) for k in ("F", "G", "api")}
        for precision, runs in per_round.items()
    }
    return dict(medians=medians, rounds=per_round, stats=stats, api_seconds=seconds)


def measure_model(model: str, args, work: Path, paths, small: Path, n_small: int) -> dict:
    """Every rate of one model, side by side; F, G and the API rate interleaved over rounds."""
    import keras

    from camcli import registry
    from camcli.api import Explainer

    spec = registry.get_spec(model)
    explainers = {precision: Explainer(model=model, weights="none", batch_size=args.batch_size,
                                       precision=precision)
                  for precision in ("float32", *args.precisions)}
    explainer = explainers["float32"]
    weights_file = work / f"{model}.weights.h5"
    explainer.loaded.model.save_weights(weights_file)
    layer_hw = tuple(explainer.loaded.layer.output.shape[1:3])

    measured = interleaved_rates(explainers, paths, work / "large", args.rounds)
    rates = measured["medians"]
    F, api = rates["float32"]["F"], rates["float32"]["api"]
    R = output_rate(paths, work / "r-out", layer_hw)
    ideal = 1 / (1 / F + 1 / R)
    cli, rss = cli_rate(model, small, work / "large", n_small, len(paths))
    one_seconds, _ = run_cli(["explain", str(paths[0]), "--model", model,
                              "--weights", str(weights_file), "-q"])
    reduced = {
        precision: dict(**rates[precision], cli=cli_rate(
            model, small, work / "large", n_small, len(paths),
            extra=("--precision", precision))[0])
        for precision in args.precisions
    }
    del explainers, explainer
    recipe = recipe_rate(model, paths[: args.recipe_images], work / "recipe")
    tkv = tfkerasvis_rate(model, paths[: 2 * args.batch_size], args.batch_size)
    keras.backend.clear_session()
    return dict(model=spec.name, F=F, G=rates["float32"]["G"], R=R, ideal=ideal, api=api,
                cli=cli, rss=rss, recipe=recipe, tkv=tkv, one=one_seconds,
                stats=measured["stats"], api_seconds=measured["api_seconds"], reduced=reduced,
                rounds=measured["rounds"])


def print_report(rows: list[dict], help_seconds: float, precisions) -> None:
    print("| model | F forward | R output | ideal 1/(1/F+1/R) | camcli API | camcli CLI "
          "| per-image recipe | tf-keras-vis (compute) | CLI peak RSS |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        tkv = f"{r['tkv']:.1f}" if r["tkv"] else "not installed"
        print(f"| {r['model']} | {r['F']:.1f} | {r['R']:.1f} | {r['ideal']:.1f} | "
              f"{r['api']:.1f} | {r['cli']:.1f} | {r['recipe']:.2f} | {tkv} | "
              f"{r['rss']:.2f} GB |")
    print("\n(images/s)\n\nGoals (CLI rate; the issue sets the F, recipe and tf-keras-vis "
          "ratios for resnet50 only):")
    for r in rows:
        checks = [("≥ 0.85 × ideal", r["cli"] / r["ideal"], 0.85, True)]
        primary = r["model"] == "resnet50"
        checks.append(("≥ 0.5 × F", r["cli"] / r["F"], 0.5, primary))
        checks.append(("≥ 0.70 × F", r["cli"] / r["F"], 0.70, primary))
        checks.append(("≥ 0.85 × F", r["cli"] / r["F"], 0.85, primary))
        checks.append(("API ≥ 0.85 × F", r["api"] / r["F"], 0.85, primary))
        for precision, rates in r["reduced"].items():
            native = precision == "bfloat16" and bf16_native()
            checks.append((f"{precision} ≥ 1.2 × F", rates["cli"] / r["F"], 1.2,
                           primary and native))
            checks.append((f"{precision} API ≥ 1.2 × F", rates["api"] / r["F"], 1.2,
                           primary and native))
        checks.append(("≥ 15 × per-image recipe", r["cli"] / r["recipe"], 15, primary))
        if r["tkv"]:
            checks.append(("≥ 2 × tf-keras-vis", r["cli"] / r["tkv"], 2, primary))
        for name, ratio, goal, is_goal in checks:
            verdict = ("met" if ratio >= goal else "MISSED") if is_goal else "(no goal)"
            print(f"  {r['model']:<14} {name:<26} {ratio:6.2f}  {verdict}")
        print(f"  {r['model']:<14} {'peak RSS < 1.5 GB':<26} {r['rss']:6.2f}  "
              f"{'met' if r['rss'] < 1.5 else 'MISSED'}")
        print(f"  {r['model']:<14} {'explain one.jpg ≤ 6.5 s':<26} {r['one']:6.2f}  "
              f"{'met' if r['one'] <= 6.5 else 'MISSED'}")
    print(f"  {'camcli --help < 0.5 s':<41} {help_seconds:6.2f}  "
          f"{'met' if help_seconds < 0.5 else 'MISSED'}")
    print("\nEach round, interleaved (images/s: F forward, G forward + gradients + map, API end "
          "to end):\n")
    for r in rows:
        for precision, runs in r["rounds"].items():
            for i, run in enumerate(runs, 1):
                print(f"  {r['model']:<14} {precision:<9} round {i}: F {run['F']:.1f}, "
                      f"G {run['G']:.1f}, API {run['api']:.1f}  ({run['load']})")
    if precisions:
        print("\nPrecisions side by side (images/s, medians of the rounds; ratios to the "
              "float32 F):\n")
        print("| model | precision | forward | forward + gradients | API | CLI | forward / F "
              "| gradients / float32's | API / F | CLI / F |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in rows:
            for precision, rates in {"float32": r, **r["reduced"]}.items():
                print(f"| {r['model']} | {precision} | {rates['F']:.1f} | {rates['G']:.1f} | "
                      f"{rates['api']:.1f} | {rates['cli']:.1f} | {rates['F'] / r['F']:.2f} | "
                      f"{rates['G'] / r['G']:.2f} | {rates['api'] / r['F']:.2f} | "
                      f"{rates['cli'] / r['F']:.2f} |")
    print("\nWhere the API run's time went (seconds summed over threads; wall time first):")
    for r in rows:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in r["stats"].seconds.items())
        print(f"  {r['model']:<14} wall {r['api_seconds']:.2f}: {parts}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v2"])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--recipe-images", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--precisions", nargs="*", default=["bfloat16"],
                        help="reduced precisions to measure beside float32")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds of F, G and the API rate (medians)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(ROOT))
    from camcli.tfimport import import_quietly

    import_quietly()
    import keras
    import tensorflow as tf

    work = Path(tempfile.mkdtemp(prefix="camcli-bench-"))
    try:
        paths = make_images(work / "large", args.images)
        small = work / "small"
        small.mkdir()
        n_small = max(args.batch_size, args.images // 6)
        for path in paths[:n_small]:
            shutil.copy(path, small / path.name)
        megapixels = np.mean([np.prod(Image.open(p).size) for p in paths]) / 1e6
        print(f"camcli benchmark: {len(paths)} JPEGs, mean {megapixels:.2f} MP; "
              f"TF {tf.__version__}, Keras {keras.__version__}, batch {args.batch_size}, "
              f"{args.rounds} interleaved rounds\n{machine()}; {load()}")
        from camcli.precision import cpu_flags, slow_reason

        for precision in args.precisions:
            gpus = len(tf.config.list_physical_devices("GPU"))
            print(f"{precision}: {slow_reason(precision, cpu_flags(), gpus) or 'fast here'}")
        print()

        help_seconds = min(timed(lambda: subprocess.run(CAMCLI + ["--help"], check=True,
                                                         capture_output=True))
                           for _ in range(3))
        rows = [measure_model(model, args, work, paths, small, n_small)
                for model in args.models]
        print_report(rows, help_seconds, args.precisions)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
        print(f"\n(this benchmark process peaked at {peak:.2f} GB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
