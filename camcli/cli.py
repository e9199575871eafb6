"""The ``camcli`` command: parses options and calls :mod:`camcli.api`; nothing more.

TensorFlow is imported only inside the commands that need a model, so ``camcli --help`` and
``camcli models`` answer at once.
"""

from __future__ import annotations

import contextlib
import io
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

from camcli import __version__, native_stderr
from camcli import options as opt
from camcli.errors import CamcliError, ExitStatus, UsageError, printable, printable_lines

app = typer.Typer(
    name="camcli",
    help="Explain image classifiers with class activation maps (Grad-CAM), batched.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


AUDIT_TOP_K = "k of the top-k check; predictions listed."
AUDIT_OVERLAY_SIDE = opt.RENDER[2].but(
    default=640, help="Longer side of the overlays in overlays/ (pixels)."
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
        _print_trace(exc)
    message = str(exc) if isinstance(exc, CamcliError) else f"{type(exc).__name__}: {exc}"
    typer.echo(f"camcli: error: {_shown(message)}", err=True)
    status = exc.exit_status if isinstance(exc, CamcliError) else ExitStatus.SOME_FAILED
    return typer.Exit(int(status))


def _shown(text: str) -> str:
    """``text`` as camcli prints it: without storage secrets (option values, URL passwords:
    see camcli.storage) and with control characters escaped (:func:`printable`)."""
    from camcli.storage import redact

    return printable(redact(text))


def _print_trace(exc: BaseException) -> None:
    typer.echo(_trace(exc), err=True)


def _trace(exc: BaseException) -> str:
    """A traceback as camcli prints it (``--debug``): redacted, each line :func:`printable`."""
    from camcli.storage import redact

    return printable_lines(redact("".join(traceback.format_exception(exc)).rstrip("\n")))


ENGINES = ("local", "ray")

PATHS = Annotated[
    list[str], typer.Argument(help="Images, folders, globs, URLs (s3://…/), or - (read stdin).")
]


@opt.command(
    app,
    opt.MODEL, opt.TARGETS, (opt.TOP_K,), opt.RENDER, opt.OUTPUTS, opt.INPUTS,
    (opt.STORAGE, opt.MAX_PIXELS, opt.MAX_INPUT_BYTES, opt.JSON_LINES, opt.RUN_REPORT),
    (opt.ENGINE,), opt.RAY, opt.RUN,
)
def explain(paths: PATHS, **options):
    """Write a Grad-CAM overlay and a JSON record beside each image (or URL)."""
    from camcli import sharding, storage
    from camcli.api import OutputOptions, RunStats
    from camcli.limits import check_max_bytes
    from camcli.report import RunRecorder

    engine, ray_options = options.pop("engine"), opt.pick(options, opt.RAY)
    try:  # before TensorFlow is imported: a bad --shard is a usage error at once
        options["shard"] = sharding.parse(options["shard"])
        check_max_bytes(options["max_input_bytes"])
        if engine not in ENGINES:
            raise UsageError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    except CamcliError as exc:
        raise _fail(exc, options["debug"]) from None
    session = _Session(options, tensorflow=engine == "local")

    def output_options():  # also checks the URLs: exit 2 before the model is loaded
        store = storage.StorageOptions.parse(options.pop("storage_option"))
        output = OutputOptions(**opt.pick(options, opt.RENDER + opt.OUTPUTS),
                               storage_options=store)
        storage.preflight(paths, output.out_dir, store)
        return output

    model_options = opt.pick(options, opt.MODEL + opt.TARGETS + (opt.TOP_K,))
    stats = RunStats()
    shard = options["shard"]
    run = dict(stop=session.stop, max_pixels=options["max_pixels"], stats=stats,
               max_input_bytes=options["max_input_bytes"],
               **opt.pick(options, opt.INPUTS))
    if engine == "ray":
        output, results = session.on_ray(output_options, model_options, paths, ray_options, run)
    else:
        output, explainer = session.load(output_options, model_options)
        results = explainer.run(paths, output, storage_options=output.storage_options, **run)
    recorder = RunRecorder(output.out_dir)
    status = session.show(recorder.watch(results), as_json=options["as_json"],
                          inputs=lambda: _shard_summary(shard, stats))
    _finish_run(recorder, options["report"], session)
    raise typer.Exit(status)


def _finish_run(recorder, report: Path | None, session) -> None:
    """Log the run's failures under --out-dir and write its --report."""
    try:
        built = recorder.finish(report)
    except Exception as exc:
        raise _fail(exc, session.debug) from None
    if built is not None and not session.quiet:
        typer.echo(f"camcli: report: {_shown(built.index)}", err=True)


def _shard_summary(shard, stats) -> str:
    return "" if shard is None else f"shard {shard}: {stats.taken} of {stats.listed} inputs, "


class _Session:
    """What every command that runs a model shares: quiet TensorFlow, signals, loading the
    explainer, progress and the summary line, and turning failures into exit codes."""

    def __init__(self, options: dict, stop_on_signals: bool = True, tensorflow: bool = True):
        self.debug, self.quiet = options["debug"], options["quiet"]
        if tensorflow:  # not for a Ray driver: the model lives on the workers
            _quiet_tensorflow(self.debug, options["threads"])
        elif not self.debug:
            import warnings

            warnings.filterwarnings("ignore")
        native_stderr.capture(show=self.debug)  # C libraries' warnings: only with --debug
        self.started = time.perf_counter()
        # Before loading: a signal then ends the run before it starts. Without it, SIGINT is
        # Python's KeyboardInterrupt, which ends the command at once.
        self.stop = _stop_on_signals() if stop_on_signals else threading.Event()

    def load(self, make_options, model_options: dict):
        """``(make_options(), Explainer(**model_options))``, or exit with the reason."""
        from camcli.api import Explainer

        try:
            options = make_options()
            _warn_model_options(model_options)
            # Keras prints its download messages ("Downloading data from …", a progress bar)
            # to stdout, which is for --json lines only, and stderr is for camcli's lines.
            with _keras_prints(self.debug):
                explainer = Explainer(**model_options)
            if explainer.slow_precision:
                typer.echo(f"camcli: warning: {explainer.slow_precision}", err=True)
        except KeyboardInterrupt:
            raise self.interrupted() from None
        except Exception as exc:
            raise _fail(exc, self.debug) from None
        if self.stop.is_set():
            raise self.interrupted()
        return options, explainer

    def on_ray(self, make_options, model_options: dict, paths, ray_options: dict, run: dict):
        """``(make_options(), results)`` of a run on a Ray cluster, or exit with the reason:
        the driver checks what it can without the model, then the workers load it."""
        from camcli.api import check_options
        from camcli.ray import RayOptions
        from camcli.ray import run as run_on_ray

        try:
            options = make_options()
            check_options(model_options)
            _warn_model_options(model_options)
            ray = RayOptions(**{name.removeprefix("ray_"): v for name, v in ray_options.items()})
            results = run_on_ray(paths, model_options, options, ray, debug=self.debug,
                                 storage_options=options.storage_options, **run)
        except KeyboardInterrupt:
            raise self.interrupted() from None
        except Exception as exc:
            raise _fail(exc, self.debug) from None
        return options, results

    def interrupted(self) -> typer.Exit:
        typer.echo("camcli: interrupted", err=True)
        return typer.Exit(int(ExitStatus.INTERRUPTED))

    def show(self, results, as_json: bool = False, inputs=lambda: "") -> int:
        """Consume the results: progress, one stderr line per failure, ``--json`` lines on
        stdout, the summary (``inputs()`` begins it). Returns the exit status."""
        counts = {"done": 0, "skipped": 0, "failed": 0}
        progress = _progress(self.quiet)
        try:
            for result in results:
                progress.update(1)
                self._count(result, counts, progress)
                if as_json:
                    sys.stdout.write(json.dumps(result.to_json(), sort_keys=True) + "\n")
                    sys.stdout.flush()
        except KeyboardInterrupt:  # a second signal: stop at once (outputs are atomic anyway)
            self.stop.set()
        except BrokenPipeError:
            # The reader went away (`camcli explain --json ... | head`): stop quietly, like cat.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return int(ExitStatus.SOME_FAILED)
        except Exception as exc:
            progress.close()
            error = _fail(exc, self.debug)
            if isinstance(exc, CamcliError):  # the run stopped itself (a full disk): the count
                _summary(counts, self.started, self.quiet, inputs=inputs())
            raise error from None
        progress.close()
        _summary(counts, self.started, self.quiet, self.stop.is_set(), inputs())
        if self.stop.is_set():
            return int(ExitStatus.INTERRUPTED)
        if not any(counts.values()):
            typer.echo("camcli: warning: no images found", err=True)
        return int(ExitStatus.SOME_FAILED if counts["failed"] else ExitStatus.OK)

    def _count(self, result, counts: dict, progress) -> None:
        if result.ok:
            counts["skipped" if result.skipped else "done"] += 1
            return
        counts["failed"] += 1
        progress.write(_shown(f"{result.path}: {result.error}"), file=sys.stderr)
        if self.debug and result.exception is not None:
            progress.write(_trace(result.exception), file=sys.stderr)


class _DebugLines(io.TextIOBase):
    """A stream for what a library prints: ``camcli: debug:`` lines on stderr with ``show``,
    nothing otherwise."""

    def __init__(self, show: bool):
        self.show, self.pending = show, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self.show:
            *lines, self.pending = (self.pending + text).replace("\r", "\n").split("\n")
            for line in filter(str.strip, lines):
                typer.echo(_shown(f"camcli: debug: {line.rstrip()}"), err=True)
        return len(text)

    def flush(self) -> None:
        if self.show and self.pending.strip():
            self.write("\n")


@contextlib.contextmanager
def _keras_prints(debug: bool):
    """What Keras prints while a model is made: debug lines with ``--debug``, else nothing."""
    lines = _DebugLines(debug)
    try:
        with contextlib.redirect_stdout(lines):
            yield
    finally:
        lines.flush()


RANDOM_WEIGHTS = "--weights none: random weights, the maps mean nothing"
UNSAFE_MODEL = ("--unsafe-model: Keras' safe mode is off, so code in the model file (Lambda "
                "layers, files it names) runs with your permissions; use only files you trust")


def _warn_model_options(model_options: dict) -> None:
    """One warning line per risky or meaningless model option, before the model is made."""
    if str(model_options.get("weights", "")).strip().lower() == "none":
        typer.echo(f"camcli: warning: {RANDOM_WEIGHTS}", err=True)
    if model_options.get("unsafe_model"):
        typer.echo(f"camcli: warning: {UNSAFE_MODEL}", err=True)


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


def _summary(
    counts: dict, started: float, quiet: bool, interrupted: bool = False, inputs: str = ""
) -> None:
    if quiet:
        return
    seconds = time.perf_counter() - started
    rate = counts["done"] / seconds if seconds > 0 else 0.0
    state = "interrupted: " if interrupted else ""
    skipped = f", {counts['skipped']} skipped" if counts["skipped"] else ""
    typer.echo(
        f"camcli: {state}{inputs}{counts['done']} done{skipped}, {counts['failed']} failed "
        f"in {seconds:.1f}s ({rate:.2f} images/s)",
        err=True,
    )


@opt.command(app, (opt.AS_JSON,))
def models(
    pattern: Annotated[
        str | None, typer.Argument(help="Only names matching this glob, e.g. 'efficientnet*'.")
    ] = None,
    **options,
):
    """List the models camcli knows: keras.applications and keras-hub presets (no TensorFlow
    needed)."""
    from camcli import hub_presets, registry

    specs = registry.list_models(pattern)
    presets = hub_presets.list_presets(pattern)
    if options["as_json"]:
        listed = [spec.to_dict() for spec in specs]
        listed += [{**preset.to_dict(), "bundled_weights": None} for preset in presets]
        typer.echo(json.dumps(listed, indent=2))
        return
    from rich.table import Table

    table = Table(
        title=f"{len(specs) + len(presets)} models",
        title_justify="left",
        caption=_weights_notes([*specs, *presets]),
        caption_justify="left",
    )
    for column in ("name", "source", "family", "input", "parameters", "default layer",
                   "preprocess", "imagenet weights", "aliases"):
        table.add_column(column)
    for spec in specs:
        height, width = spec.input_size
        table.add_row(spec.name, "keras.applications", spec.family, f"{height}×{width}",
                      _millions(spec.parameters), spec.default_layer, spec.family,
                      spec.weights_status(), ", ".join(spec.aliases))
    for preset in presets:
        size = preset.input_size
        table.add_row(preset.name, "keras-hub", preset.family, f"{size}×{size}" if size else "",
                      _millions(preset.parameters), "", "image converter",
                      preset.weights_status(), "")
    _console().print(table)


_WEIGHTS_NOTES = {"bundled": "bundled: the weights ship with camcli, no download",
                  "cached": "cached: already in the Keras or kagglehub cache, no download"}


def _weights_notes(rows) -> str | None:
    """What the ``imagenet weights`` words shown mean (``download`` needs no note)."""
    shown = {row.weights_status() for row in rows}
    return "\n".join(note for word, note in _WEIGHTS_NOTES.items() if word in shown) or None


def _millions(parameters: int | None) -> str:
    return f"{parameters / 1e6:.1f} M" if parameters else ""


@opt.command(app, opt.only(opt.MODEL, "output", "unsafe_model"), (opt.AS_JSON,),
             opt.only(opt.RUN, "debug"))
def layers(
    model: Annotated[str, typer.Argument(help="Registry model name or .keras/.h5 model file.")],
    **options,
):
    """List the layers with 4-D outputs, or a transformer's token layers (possible --layer
    targets); * marks the default."""
    debug = options["debug"]
    _quiet_tensorflow(debug)
    _warn_model_options({"unsafe_model": options["unsafe_model"]})
    try:
        from camcli import loading

        weights = "file" if loading.is_model_file(model) else "none"  # shapes only
        loaded = loading.load(
            model, weights=weights, output=options["output"], unsafe=options["unsafe_model"]
        )
        rows = [
            {"layer": s.path, "shape": list(s.shape), "default": s.path == loaded.layer_path}
            for s in loading.spatial_layers(loaded.model)
        ]
        reason = None
        if loaded.adapter(0).kind == "tokens":  # a transformer: its token layers, as grids
            found, (_, reason) = loading.token_targets(loaded.model, loaded.input_size,
                                                       loaded.channels)
            rows = [{"layer": t.path, "shape": list(t.shape),
                     "default": t.path == loaded.layer_path, "tokens": t.adapter.describe()}
                    for t in found]
    except Exception as exc:
        raise _fail(exc, debug) from None
    if options["as_json"]:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    kind = "token layers (as grids)" if reason else "layers with 4-D outputs"
    table = Table(title=printable(f"{loaded.name}: {len(rows)} {kind}"), title_justify="left",
                  caption=f"* default: {reason}" if reason else None, caption_justify="left")
    for column in ("", "layer", "output (h, w, c)"):
        table.add_column(column)
    for row in rows:
        shape = str(tuple(row["shape"]))
        table.add_row("*" if row["default"] else "", printable(row["layer"]), shape)
    _console().print(table)


MANIFEST = Annotated[
    Path, typer.Argument(help="CSV or JSONL: path, expected, bbox or mask, per-row thresholds.")
]


@opt.command(
    app,
    opt.MODEL, opt.AUDIT, opt.THRESHOLD_OPTIONS, (opt.TOP_K.but(help=AUDIT_TOP_K),),
    opt.only(opt.RENDER, "colormap", "alpha"), (AUDIT_OVERLAY_SIDE, opt.MAX_PIXELS), opt.RUN,
)
def audit(manifest: MANIFEST, **options):
    """Audit what a model looks at on a manifest of images; exit 1 when a check fails."""
    from camcli.audit import AuditSettings, load_manifest, run_audit
    from camcli.audit.checks import parse_mean_check
    from camcli.audit.reports import verdict_text

    started = time.perf_counter()
    model_options = opt.pick(options, opt.MODEL)
    thresholds = opt.pick(options, opt.THRESHOLD_OPTIONS)
    protocol = opt.pick(options, opt.AUDIT)
    try:  # a broken manifest or option fails at once, before TensorFlow is imported
        settings = AuditSettings(
            out_dir=protocol.pop("out"),
            thresholds={name: value for name, value in thresholds.items() if value is not None},
            mean_thresholds=dict(parse_mean_check(text) for text in protocol.pop("mean") or ()),
            **protocol,
            **opt.pick(options, (opt.TOP_K, *opt.RENDER, opt.MAX_PIXELS)),
        )
        settings.validate()
        parsed = load_manifest(manifest)
    except Exception as exc:
        raise _fail(exc, options["debug"]) from None
    session = _Session(options, stop_on_signals=False)  # Ctrl-C ends an audit at once
    progress = _progress(session.quiet)
    progress.total = len(parsed.rows)
    _, explainer = session.load(lambda: None, model_options)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            result = run_audit(parsed, explainer, settings, progress=progress.update)
    except KeyboardInterrupt:
        progress.close()
        raise session.interrupted() from None
    except Exception as exc:
        progress.close()
        raise _fail(exc, session.debug) from None
    progress.close()
    if not session.quiet:
        typer.echo(printable_lines(result.files["summary.md"].read_text(encoding="utf-8")))
        verdict = "passed" if result.passed else "FAILED"
        typer.echo(
            f"camcli: audit {verdict}: {verdict_text(result.record['summary'])} in "
            f"{time.perf_counter() - started:.1f}s; report: {result.files['report.html']}",
            err=True,
        )
    raise typer.Exit(int(result.exit_status))


REPORT_SOURCES = Annotated[
    list[str],
    typer.Argument(help="Folders holding camcli outputs (searched recursively), or records."),
]


@opt.command(app, opt.REPORT, opt.only(opt.RUN, "quiet", "debug"), name="report")
def report_command(sources: REPORT_SOURCES, **options):
    """Build one page over the records that runs left in these folders (shards merge)."""
    from camcli.report import build_report

    started = time.perf_counter()
    try:
        built = build_report(sources, options["out"], title=options["title"])
    except Exception as exc:
        raise _fail(exc, options["debug"]) from None
    for problem in built.problems:
        typer.echo(f"camcli: {_shown(problem)}", err=True)
    if not options["quiet"]:
        counts = built.data["counts"]
        typer.echo(
            f"camcli: report of {counts['done']} inputs ({counts['failed']} failed, "
            f"{counts['empty']} empty maps) in {time.perf_counter() - started:.1f}s: "
            f"{_shown(built.index)}",
            err=True,
        )
    raise typer.Exit(int(ExitStatus.SOME_FAILED if built.problems else ExitStatus.OK))


def _console():
    """A rich console; piped, it is as wide as the table needs, so no name is cut short."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=10_000)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
