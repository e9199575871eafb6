"""The ``camcli`` command: parses options and calls :mod:`camcli.api`; nothing more.

TensorFlow is imported only inside the commands that need a model, so ``camcli --help`` and
``camcli models`` answer at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Annotated

import typer

from camcli import __version__
from camcli.errors import CamcliError, ExitStatus

app = typer.Typer(
    name="camcli",
    help="Explain image classifiers with class activation maps (Grad-CAM), batched.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool):
    if value:
        typer.echo(f"camcli {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
):
    """Explain image classifiers with class activation maps (Grad-CAM), batched."""


def _quiet_tensorflow(debug: bool, threads: int | None = None) -> None:
    """Keep TensorFlow's start-up chatter and Python warnings off stderr unless debugging."""
    from camcli.tfimport import import_quietly

    if threads is not None and threads < 1:
        typer.echo(f"camcli: error: --threads must be at least 1, not {threads}", err=True)
        raise typer.Exit(int(ExitStatus.USAGE))
    if not debug:
        import warnings

        warnings.filterwarnings("ignore")
    import_quietly(threads, quiet=not debug)


def _fail(exc: BaseException, debug: bool) -> typer.Exit:
    if debug:
        traceback.print_exception(exc)
    message = str(exc) if isinstance(exc, CamcliError) else f"{type(exc).__name__}: {exc}"
    typer.echo(f"camcli: error: {message}", err=True)
    status = exc.exit_status if isinstance(exc, CamcliError) else ExitStatus.SOME_FAILED
    return typer.Exit(int(status))


@app.command()
def explain(
    paths: Annotated[
        list[str],
        typer.Argument(help="Images, folders, glob patterns, or - to read paths from stdin."),
    ],
    model: Annotated[
        str,
        typer.Option(
            "--model", "-m", help="Registry name (see `camcli models`) or a .keras/.h5 model file."
        ),
    ] = "resnet50",
    weights: Annotated[
        str,
        typer.Option(help="'imagenet' (Keras cache, downloads once), 'none' (random) or a file."),
    ] = "imagenet",
    layer: Annotated[
        list[str] | None,
        typer.Option(
            "--layer",
            "-l",
            help="Target layer (default: the model's); nested: outer/inner. Repeat to fuse.",
        ),
    ] = None,
    method: Annotated[
        str,
        typer.Option(
            help="gradcam, gradcam++, xgradcam, hirescam, layercam, eigencam, scorecam, "
            "ablationcam."
        ),
    ] = "gradcam",
    fuse: Annotated[str, typer.Option(help="Combine several layers' maps: mean or max.")] = "mean",
    aug_smooth: Annotated[
        bool, typer.Option(help="Average over flips and scales (6 passes; smoother maps).")
    ] = False,
    eigen_smooth: Annotated[
        bool, typer.Option(help="Keep the first principal component of the weighted maps.")
    ] = False,
    scorecam_batch: Annotated[
        int, typer.Option(help="Score-/Ablation-CAM: masked inputs per model call.")
    ] = 64,
    scorecam_channels: Annotated[
        int | None,
        typer.Option(help="Score-CAM: only the N highest-variance channels (faster)."),
    ] = None,
    classes: Annotated[
        list[str] | None,
        typer.Option(
            "--class", "-c", help="Class to explain: index, WordNet id or label (repeatable)."
        ),
    ] = None,
    top_k_cams: Annotated[
        int | None, typer.Option(help="Explain each image's N best classes.")
    ] = None,
    top_k: Annotated[int, typer.Option(help="Predictions listed in the JSON.")] = 5,
    preprocess: Annotated[
        str | None,
        typer.Option(
            help="none, scale01, tf, caffe, torch or a registry model name "
            "(default: the registry model's own; none for model files)."
        ),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(help="Class names: a text file (one per line) or a JSON list/dict."),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(help="Classification output (name or index) of a multi-output model."),
    ] = None,
    unsafe_model: Annotated[
        bool, typer.Option(help="Allow model files that run Python code (Lambda layers).")
    ] = False,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out-dir", "-o", help="Write outputs here, mirroring input paths."),
    ] = None,
    colormap: Annotated[
        str, typer.Option(help="jet, turbo, viridis, inferno or gray.")
    ] = "jet",
    alpha: Annotated[float, typer.Option(help="Heatmap opacity in the overlay (0-1).")] = 0.4,
    overlay_format: Annotated[str, typer.Option(help="png, jpg or webp.")] = "png",
    max_overlay_side: Annotated[
        int | None, typer.Option(help="Cap the overlay's longer side (pixels).")
    ] = None,
    save_heatmap: Annotated[
        bool, typer.Option(help="Also write the raw normalised map (.npy).")
    ] = False,
    batch_size: Annotated[int, typer.Option(help="Images per model call.")] = 16,
    threads: Annotated[
        int | None,
        typer.Option(help="TensorFlow threads (default: TensorFlow's own choice, all cores)."),
    ] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Descend folders.")] = False,
    skip_existing: Annotated[
        bool,
        typer.Option(help="Skip inputs whose outputs are complete, newer and made the same way."),
    ] = False,
    max_pixels: Annotated[
        int, typer.Option(help="Refuse images declaring more pixels (decompression bombs).")
    ] = 89_478_485,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON line per image on stdout.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")
    ] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks and TensorFlow logs.")] = False,
):
    """Write a Grad-CAM overlay and a JSON record beside each image."""
    _quiet_tensorflow(debug, threads)
    from camcli.api import Explainer, OutputOptions

    started = time.perf_counter()
    stop = _stop_on_signals()  # before loading: a signal then ends the run before it starts
    try:
        options = OutputOptions(
            out_dir=out_dir,
            colormap=colormap,
            alpha=alpha,
            overlay_format=overlay_format,
            save_heatmap=save_heatmap,
            max_overlay_side=max_overlay_side,
        )
        if weights.strip().lower() == "none":
            typer.echo(
                "camcli: warning: --weights none: random weights, the maps mean nothing",
                err=True,
            )
        # Keras prints its download messages to stdout; stdout is for --json lines only.
        with contextlib.redirect_stdout(sys.stderr):
            explainer = Explainer(
                model=model,
                weights=weights,
                layer=layer or None,
                method=method,
                classes=classes or (),
                top_k_cams=top_k_cams,
                top_k=top_k,
                batch_size=batch_size,
                preprocess=preprocess,
                labels=labels,
                output=output,
                unsafe_model=unsafe_model,
                eigen_smooth=eigen_smooth,
                aug_smooth=aug_smooth,
                fuse=fuse,
                scorecam_batch=scorecam_batch,
                scorecam_channels=scorecam_channels,
            )
    except KeyboardInterrupt:
        typer.echo("camcli: interrupted", err=True)
        raise typer.Exit(int(ExitStatus.INTERRUPTED)) from None
    except Exception as exc:
        raise _fail(exc, debug) from None

    if stop.is_set():
        typer.echo("camcli: interrupted", err=True)
        raise typer.Exit(int(ExitStatus.INTERRUPTED))
    results = explainer.run(
        paths,
        options,
        recursive=recursive,
        max_pixels=max_pixels,
        skip_existing=skip_existing,
        stop=stop,
    )
    counts = {"done": 0, "skipped": 0, "failed": 0}
    progress = _progress(quiet)
    try:
        for result in results:
            progress.update(1)
            if not result.ok:
                counts["failed"] += 1
                progress.write(f"{result.path}: {result.error}", file=sys.stderr)
                if debug and result.exception is not None:
                    trace = traceback.format_exception(result.exception)
                    progress.write("".join(trace).rstrip("\n"), file=sys.stderr)
            else:
                counts["skipped" if result.skipped else "done"] += 1
            if as_json:
                sys.stdout.write(json.dumps(result.to_json(), sort_keys=True) + "\n")
                sys.stdout.flush()
    except KeyboardInterrupt:  # a second signal: stop at once (outputs are atomic anyway)
        stop.set()
    except BrokenPipeError:
        # The reader went away (`camcli explain --json ... | head`): stop quietly, like cat does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(int(ExitStatus.SOME_FAILED)) from None
    except Exception as exc:
        progress.close()
        raise _fail(exc, debug) from None
    progress.close()
    _summary(counts, started, quiet, interrupted=stop.is_set())
    if stop.is_set():
        raise typer.Exit(int(ExitStatus.INTERRUPTED))
    if not any(counts.values()):
        typer.echo("camcli: warning: no images found", err=True)
    raise typer.Exit(int(ExitStatus.SOME_FAILED if counts["failed"] else ExitStatus.OK))


def _stop_on_signals() -> threading.Event:
    """SIGINT/SIGTERM ask the run to stop after the images in flight; a second one stops now."""
    stop = threading.Event()

    def handle(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handle)
    return stop


def _progress(quiet: bool):
    from tqdm import tqdm

    return tqdm(
        unit="img",
        file=sys.stderr,
        disable=quiet or not sys.stderr.isatty(),
        dynamic_ncols=True,
    )


def _summary(counts: dict, started: float, quiet: bool, interrupted: bool = False) -> None:
    if quiet:
        return
    seconds = time.perf_counter() - started
    rate = counts["done"] / seconds if seconds > 0 else 0.0
    state = "interrupted: " if interrupted else ""
    skipped = f", {counts['skipped']} skipped" if counts["skipped"] else ""
    typer.echo(
        f"camcli: {state}{counts['done']} done{skipped}, {counts['failed']} failed "
        f"in {seconds:.1f}s ({rate:.2f} images/s)",
        err=True,
    )


@app.command()
def models(
    pattern: Annotated[
        str | None, typer.Argument(help="Only names matching this glob, e.g. 'efficientnet*'.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
):
    """List the models camcli knows (no TensorFlow needed)."""
    from camcli import registry

    specs = registry.list_models(pattern)
    if as_json:
        typer.echo(json.dumps([spec.to_dict() for spec in specs], indent=2))
        return
    from rich.table import Table

    table = Table(title=f"{len(specs)} models", title_justify="left")
    for column in ("name", "input", "default layer", "preprocess", "aliases"):
        table.add_column(column)
    for spec in specs:
        height, width = spec.input_size
        table.add_row(
            spec.name, f"{height}×{width}", spec.default_layer, spec.family, ", ".join(spec.aliases)
        )
    _console().print(table)


@app.command()
def layers(
    model: Annotated[str, typer.Argument(help="Registry model name or .keras/.h5 model file.")],
    output: Annotated[
        str | None,
        typer.Option(help="Classification output (name or index) of a multi-output model."),
    ] = None,
    unsafe_model: Annotated[
        bool, typer.Option(help="Allow model files that run Python code (Lambda layers).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks and TensorFlow logs.")] = False,
):
    """List the layers with 4-D outputs (possible --layer targets); * marks the default."""
    _quiet_tensorflow(debug)
    try:
        from camcli import loading

        weights = "file" if loading.is_model_file(model) else "none"  # shapes only
        loaded = loading.load(model, weights=weights, output=output, unsafe=unsafe_model)
        rows = [
            {"layer": s.path, "shape": list(s.shape), "default": s.path == loaded.layer_path}
            for s in loading.spatial_layers(loaded.model)
        ]
    except Exception as exc:
        raise _fail(exc, debug) from None
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(title=f"{loaded.name}: {len(rows)} layers with 4-D outputs", title_justify="left")
    for column in ("", "layer", "output (h, w, c)"):
        table.add_column(column)
    for row in rows:
        table.add_row("*" if row["default"] else "", row["layer"], str(tuple(row["shape"])))
    _console().print(table)


@app.command()
def audit(
    manifest: Annotated[
        Path,
        typer.Argument(help="CSV or JSONL: path, expected, bbox or mask, per-row thresholds."),
    ],
    model: Annotated[
        str,
        typer.Option(
            "--model", "-m", help="Registry name (see `camcli models`) or a .keras/.h5 model file."
        ),
    ] = "resnet50",
    weights: Annotated[
        str,
        typer.Option(help="'imagenet' (Keras cache, downloads once), 'none' (random) or a file."),
    ] = "imagenet",
    layer: Annotated[
        list[str] | None,
        typer.Option("--layer", "-l", help="Target layer (default: the model's). Repeat to fuse."),
    ] = None,
    method: Annotated[str, typer.Option(help="CAM method, as for explain.")] = "gradcam",
    fuse: Annotated[str, typer.Option(help="Combine several layers' maps: mean or max.")] = "mean",
    aug_smooth: Annotated[bool, typer.Option(help="Average over flips and scales.")] = False,
    eigen_smooth: Annotated[
        bool, typer.Option(help="Keep the first principal component of the weighted maps.")
    ] = False,
    preprocess: Annotated[
        str | None,
        typer.Option(help="none, scale01, tf, caffe, torch or a registry model name."),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(help="Class names: a text file (one per line) or a JSON list/dict."),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(help="Classification output (name or index) of a multi-output model."),
    ] = None,
    unsafe_model: Annotated[
        bool, typer.Option(help="Allow model files that run Python code (Lambda layers).")
    ] = False,
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Folder for audit.json, junit.xml, summary.md, "
                     "report.html and overlays/."),
    ] = Path("camcli-audit"),
    baseline: Annotated[
        Path | None,
        typer.Option(help="An earlier audit.json of the same manifest: report what changed."),
    ] = None,
    steps: Annotated[int, typer.Option(help="Deletion/insertion steps.")] = 20,
    top_k: Annotated[int, typer.Option(help="k of the top-k check; predictions listed.")] = 5,
    blur_sigma: Annotated[
        float | None,
        typer.Option(help="Deletion/insertion baseline blur σ, input pixels (default 10 at 224)."),
    ] = None,
    pointing_tolerance: Annotated[
        float | None,
        typer.Option(help="Pointing-game tolerance, input pixels (default 15 at 224)."),
    ] = None,
    min_top1: Annotated[
        float | None, typer.Option(help="Check: top-1 is the expected class (1 = required).")
    ] = None,
    min_topk: Annotated[
        float | None, typer.Option(help="Check: expected class in the top-k (1 = required).")
    ] = None,
    min_expected_probability: Annotated[
        float | None, typer.Option(help="Check: probability of the expected class.")
    ] = None,
    min_pointing: Annotated[
        float | None, typer.Option(help="Check: map peak on the box/mask (1 = required).")
    ] = None,
    min_energy_in_box: Annotated[
        float | None, typer.Option(help="Check: share of map energy inside the box/mask.")
    ] = None,
    max_average_drop: Annotated[
        float | None, typer.Option(help="Check: Average Drop on image × map, percent.")
    ] = None,
    min_increase_in_confidence: Annotated[
        float | None, typer.Option(help="Check: 100 if image × map scores higher, else 0.")
    ] = None,
    max_deletion_auc: Annotated[
        float | None, typer.Option(help="Check: deletion AUC (lower is more faithful).")
    ] = None,
    min_insertion_auc: Annotated[
        float | None, typer.Option(help="Check: insertion AUC (higher is more faithful).")
    ] = None,
    max_map_drift: Annotated[
        float | None,
        typer.Option(help="Check (--baseline): 1 - IoU of the top-20 % regions of the maps."),
    ] = None,
    max_probability_drop: Annotated[
        float | None,
        typer.Option(help="Check (--baseline): fall of the class probability since then."),
    ] = None,
    mean: Annotated[
        list[str] | None,
        typer.Option(
            "--mean",
            help="Check on the manifest's mean, not per image: NAME=VALUE with a threshold "
            "name, e.g. min_energy_in_box=0.3 or min_top1=0.9 (repeatable).",
        ),
    ] = None,
    colormap: Annotated[str, typer.Option(help="Overlay colormap.")] = "jet",
    alpha: Annotated[float, typer.Option(help="Heatmap opacity in the overlay (0-1).")] = 0.4,
    max_overlay_side: Annotated[
        int, typer.Option(help="Longer side of the overlays in overlays/ (pixels).")
    ] = 640,
    batch_size: Annotated[int, typer.Option(help="Images per model call.")] = 16,
    score_batch: Annotated[
        int, typer.Option(help="Perturbed images per model call (faithfulness).")
    ] = 64,
    max_pixels: Annotated[
        int, typer.Option(help="Refuse images declaring more pixels (decompression bombs).")
    ] = 89_478_485,
    threads: Annotated[
        int | None,
        typer.Option(help="TensorFlow threads (default: TensorFlow's own choice, all cores)."),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar, summary or verdict line.")
    ] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks and TensorFlow logs.")] = False,
):
    """Audit what a model looks at on a manifest of images; exit 1 when a check fails."""
    from camcli.audit import AuditSettings, load_manifest
    from camcli.audit.checks import parse_mean_check
    from camcli.audit.reports import verdict_text

    started = time.perf_counter()
    limits = {
        "min_top1": min_top1,
        "min_topk": min_topk,
        "min_expected_probability": min_expected_probability,
        "min_pointing": min_pointing,
        "min_energy_in_box": min_energy_in_box,
        "max_average_drop": max_average_drop,
        "min_increase_in_confidence": min_increase_in_confidence,
        "max_deletion_auc": max_deletion_auc,
        "min_insertion_auc": min_insertion_auc,
        "max_map_drift": max_map_drift,
        "max_probability_drop": max_probability_drop,
    }
    try:  # a broken manifest or option fails at once, before TensorFlow is imported
        settings = AuditSettings(
            out_dir=out,
            thresholds={name: value for name, value in limits.items() if value is not None},
            mean_thresholds=dict(parse_mean_check(text) for text in mean or ()),
            baseline=baseline,
            top_k=top_k,
            steps=steps,
            blur_sigma=blur_sigma,
            pointing_tolerance=pointing_tolerance,
            score_batch=score_batch,
            colormap=colormap,
            alpha=alpha,
            max_overlay_side=max_overlay_side,
            max_pixels=max_pixels,
        )
        settings.validate()
        parsed = load_manifest(manifest)
    except Exception as exc:
        raise _fail(exc, debug) from None
    _quiet_tensorflow(debug, threads)
    from camcli.api import Explainer
    from camcli.audit import run_audit

    progress = _progress(quiet)
    progress.total = len(parsed.rows)
    try:
        if weights.strip().lower() == "none":
            typer.echo(
                "camcli: warning: --weights none: random weights, the maps mean nothing",
                err=True,
            )
        with contextlib.redirect_stdout(sys.stderr):  # Keras download messages
            explainer = Explainer(
                model=model,
                weights=weights,
                layer=layer or None,
                method=method,
                batch_size=batch_size,
                preprocess=preprocess,
                labels=labels,
                output=output,
                unsafe_model=unsafe_model,
                eigen_smooth=eigen_smooth,
                aug_smooth=aug_smooth,
                fuse=fuse,
            )
            result = run_audit(parsed, explainer, settings, progress=progress.update)
    except KeyboardInterrupt:
        progress.close()
        typer.echo("camcli: interrupted", err=True)
        raise typer.Exit(int(ExitStatus.INTERRUPTED)) from None
    except Exception as exc:
        progress.close()
        raise _fail(exc, debug) from None
    progress.close()
    if not quiet:
        typer.echo(result.files["summary.md"].read_text(encoding="utf-8"))
        verdict = "passed" if result.passed else "FAILED"
        typer.echo(
            f"camcli: audit {verdict}: {verdict_text(result.record['summary'])} in "
            f"{time.perf_counter() - started:.1f}s; report: {result.files['report.html']}",
            err=True,
        )
    raise typer.Exit(int(result.exit_status))


def _console():
    """A rich console; piped, it is as wide as the table needs, so no name is cut short."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=10_000)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
