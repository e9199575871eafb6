"""The Python entry points: everything the CLI does goes through here.

``explain(paths, ...)`` streams :class:`ImageResult` objects while a three-stage pipeline runs:
a thread pool decodes inputs ahead of the model, the engine computes a whole batch at once, and
a second pool draws, encodes and writes each image's outputs behind it. Every queue is bounded,
so memory does not grow with the number of inputs, and a bad input becomes a failed result
instead of stopping the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from camcli import __version__, images, render
from camcli.errors import InputError, UsageError
from camcli.heatmaps import map_stats
from camcli.outputs import (
    SCHEMA_VERSION,
    OutputPaths,
    atomic_write,
    is_up_to_date,
    settings_fingerprint,
    sha256,
    to_json_bytes,
)

#: Runs with at most this many images use the eager step: tracing would cost more than it saves.
EAGER_MAX_IMAGES = 2
DEFAULT_BATCH_SIZE = 16


@dataclass
class ImageResult:
    """The outcome for one input: its record and files, or the reason it failed."""

    path: Path
    ok: bool
    error: str | None = None
    record: dict | None = None
    files: tuple[Path, ...] = ()
    cams: np.ndarray | None = field(default=None, repr=False)  # (k, h, w) in [0, 1]
    skipped: bool = False  # outputs were up to date (``skip_existing``): nothing was computed
    exception: BaseException | None = field(default=None, repr=False)  # why it failed (--debug)

    def to_json(self) -> dict:
        """One line of ``--json`` output."""
        if not self.ok:
            return {"ok": False, "input": str(self.path), "error": self.error}
        if self.skipped:
            return {"ok": True, "skipped": True, "input": str(self.path)}
        return {"ok": True, **(self.record or {}), "files": [str(f) for f in self.files]}


class RunStats:
    """Seconds spent per pipeline stage, summed over threads, to show where a run's time goes.

    ``decode``, ``render``, ``encode`` and ``write`` run in worker threads; ``compute`` is the
    engine; ``input_wait`` is the model's thread waiting for decoded images and ``output_wait``
    it waiting for the writers to make room (back-pressure).
    """

    STAGES = ("decode", "compute", "render", "encode", "write", "input_wait", "output_wait")

    def __init__(self):
        self.seconds = dict.fromkeys(self.STAGES, 0.0)
        self.images = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def time(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            with self._lock:
                self.seconds[stage] += elapsed


@dataclass(frozen=True)
class OutputOptions:
    """How results are drawn and where they are written."""

    out_dir: Path | None = None
    colormap: str = "jet"
    alpha: float = 0.4
    overlay_format: str = "png"
    save_heatmap: bool = False
    max_overlay_side: int | None = None
    write: bool = True

    def __post_init__(self):
        render.colormap(self.colormap)  # fails early on an unknown name
        if self.overlay_format not in render.OVERLAY_FORMATS:
            raise UsageError(
                f"unknown overlay format {self.overlay_format!r}; "
                f"choose from {', '.join(render.OVERLAY_FORMATS)}"
            )
        if not 0.0 <= self.alpha <= 1.0:
            raise UsageError(f"--alpha must be between 0 and 1, not {self.alpha}")


class Explainer:
    """A model, a layer and a method, ready to explain images in batches.

    Building one loads the model (the slow part); reuse it for several runs.
    """

    def __init__(
        self,
        model: str = "resnet50",
        weights: str = "imagenet",
        layer: str | Sequence[str] | None = None,
        method: str = "gradcam",
        classes: Iterable[int | str] = (),
        top_k_cams: int | None = None,
        top_k: int = 5,
        batch_size: int = DEFAULT_BATCH_SIZE,
        preprocess: str | None = None,
        labels: str | os.PathLike | None = None,
        output: str | int | None = None,
        unsafe_model: bool = False,
        eigen_smooth: bool = False,
        aug_smooth: bool = False,
        fuse: str = "mean",
        scorecam_batch: int = 64,
        scorecam_channels: int | None = None,
    ):
        from camcli import engine, loading
        from camcli.methods import get_method

        if batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, not {batch_size}")
        if top_k < 1:
            raise UsageError(f"--top-k must be at least 1, not {top_k}")
        if top_k_cams is not None and top_k_cams < 1:
            raise UsageError(f"--top-k-cams must be at least 1, not {top_k_cams}")
        classes = list(classes)
        if classes and top_k_cams:
            raise UsageError("give either --class or --top-k-cams, not both")
        self.method = get_method(method)
        try:
            self.cam_options = engine.CamOptions(
                eigen_smooth=eigen_smooth,
                aug_smooth=aug_smooth,
                fuse=fuse,
                chunk_size=scorecam_batch,
                scorecam_channels=scorecam_channels,
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        self.loaded = loading.load(
            model,
            weights=weights,
            layer=layer,
            preprocess=preprocess,
            labels=labels,
            output=output,
            unsafe=unsafe_model,
        )
        labels = self.loaded.labels
        resolved = tuple(dict.fromkeys(labels.resolve(c) for c in classes))
        self.targets = engine.Targets(classes=resolved or None, top=top_k_cams or 1)
        self.top_k = min(top_k, len(labels))
        self.batch_size = batch_size
        self._engines: dict[bool, engine.Engine] = {}

    # ----------------------------------------------------------------- compute only

    def engine(self, compiled: bool = True):
        """The engine for this model (one trace each for the compiled and eager variant)."""
        from camcli.engine import Engine

        if compiled not in self._engines:
            self._engines[compiled] = Engine(
                self.loaded, self.targets, self.method, compiled, self.cam_options
            )
        return self._engines[compiled]

    def preprocess(self, pixels: np.ndarray) -> np.ndarray:
        """Apply the model's preprocessing to a uint8 batch at the model's input size."""
        return self.loaded.preprocess(np.asarray(pixels, dtype=np.float32).copy())

    def explain_arrays(self, pixels: np.ndarray, compiled: bool | None = None):
        """Explain a batch of RGB images already at the model's input size (for notebooks).

        Returns the engine's :class:`~camcli.engine.BatchOutput` (logits, targets, maps).
        """
        pixels = np.asarray(pixels)
        if compiled is None:
            compiled = len(pixels) > EAGER_MAX_IMAGES
        return self.engine(compiled).run(self.preprocess(pixels))

    def predict(self, pixels: np.ndarray, chunk: int = 64) -> np.ndarray:
        """Class scores (the explained scores: logits) for uint8/float RGB images at the model's
        input size, in chunks of ``chunk`` through one compiled forward pass. For metrics that
        re-score perturbed images (audits), so they use the same preprocessing and scores."""
        engine = self.engine(True)
        pixels = np.asarray(pixels)
        parts = [
            np.asarray(engine.scores(self.preprocess(pixels[i : i + chunk])))
            for i in range(0, len(pixels), chunk)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, len(self.loaded.labels)))

    def method_options(self) -> dict:
        """The options that change the maps, as recorded in every record."""
        options = self.cam_options
        recorded = {"eigen_smooth": options.eigen_smooth, "aug_smooth": options.aug_smooth}
        if len(self.loaded.target_layers) > 1:
            recorded["fuse"] = options.fuse
        if self.method.name == "scorecam":
            recorded["scorecam_channels"] = options.scorecam_channels
        return recorded

    # ----------------------------------------------------------------- files in, files out

    def settings(self, options: OutputOptions) -> dict:
        """What determines the outputs' content; hashed into the records' fingerprint."""
        return {
            "model": self.loaded.describe(),
            "method": self.method.name,
            "method_options": self.method_options(),
            "classes": list(self.targets.classes or ()),
            "top_k_cams": None if self.targets.classes else self.targets.top,
            "top_k": self.top_k,
            "colormap": options.colormap,
            "alpha": options.alpha,
            "overlay_format": options.overlay_format,
            "save_heatmap": options.save_heatmap,
            "max_overlay_side": options.max_overlay_side,
        }

    def run(
        self,
        paths: Iterable[str],
        options: OutputOptions | None = None,
        recursive: bool = False,
        stdin: Iterable[str] | None = None,
        max_pixels: int | None = images.DEFAULT_MAX_PIXELS,
        workers: int | None = None,
        skip_existing: bool = False,
        stop: threading.Event | None = None,
        stats: RunStats | None = None,
    ) -> Iterator[ImageResult]:
        """Explain every input found in ``paths``, yielding one result per input.

        ``skip_existing``: inputs whose outputs are complete, newer than the input and made with
        the same settings are yielded as skipped without being decoded. ``stop``: when set (the
        CLI sets it on SIGINT/SIGTERM), no new input is started; the images already decoded are
        finished and written, then the run ends. ``stats``: filled with per-stage timings.
        """
        stats = stats or RunStats()
        options = options or OutputOptions()
        paths = list(paths)
        inputs: Iterable[Path] = images.discover(paths, recursive=recursive, stdin=stdin)
        compiled = True
        if "-" not in paths:
            inputs = list(inputs)
            compiled = len(inputs) > EAGER_MAX_IMAGES
        engine = self.engine(compiled)
        workers = workers or max(1, os.cpu_count() or 1)
        writer = _Writer(self, options, stats)
        height, width = self.loaded.input_size
        fingerprint = writer.common["settings_fingerprint"]

        def decode(path: Path):
            if skip_existing and is_up_to_date(
                OutputPaths.for_input(path, options.out_dir), path, fingerprint
            ):
                return _SKIPPED
            try:
                with stats.time("decode"):
                    return images.read_for_model(
                        path, (height, width), self.loaded.channels, max_pixels
                    )
            except InputError as exc:
                return exc
            except Exception as exc:  # a decoder bug on one odd file must not stop the run
                error = InputError(path, f"cannot decode image: {exc!r}")
                error.__cause__ = exc
                return error

        with (
            ThreadPoolExecutor(workers, thread_name_prefix="camcli-decode") as decoders,
            ThreadPoolExecutor(workers, thread_name_prefix="camcli-write") as writers,
        ):
            pending: deque[Future] = deque()
            batch: list[images.DecodedImage] = []

            def flush() -> Iterator[ImageResult]:
                with stats.time("compute"):
                    pixels = np.stack([item.pixels for item in batch])
                    output = engine.run(self.preprocess(pixels))
                stats.images += len(batch)
                for i, item in enumerate(batch):
                    pending.append(writers.submit(writer.write, item, output, i))
                batch.clear()
                while pending and (pending[0].done() or len(pending) > 2 * self.batch_size):
                    with stats.time("output_wait"):
                        result = pending.popleft().result()
                    yield result

            queue = _prefetch(decoders, decode, inputs, 2 * self.batch_size, stats)
            for path, decoded in queue:
                if stop is not None and stop.is_set():
                    decoders.shutdown(wait=False, cancel_futures=True)
                    break
                if decoded is _SKIPPED:
                    yield ImageResult(path, ok=True, skipped=True)
                    continue
                if isinstance(decoded, InputError):
                    yield ImageResult(
                        decoded.path, ok=False, error=decoded.reason, exception=decoded
                    )
                    continue
                batch.append(decoded)
                if len(batch) == self.batch_size:
                    yield from flush()
            if batch:
                yield from flush()
            while pending:
                yield pending.popleft().result()


_SKIPPED = object()


def _prefetch(pool, fn, items: Iterable, depth: int, stats: RunStats) -> Iterator:
    """``(item, fn(item))`` for each item, computed on ``pool`` with ``depth`` calls in flight."""
    window: deque[tuple[object, Future]] = deque()

    def oldest():
        item, future = window.popleft()
        with stats.time("input_wait"):
            return item, future.result()

    for item in items:
        window.append((item, pool.submit(fn, item)))
        if len(window) >= depth:
            yield oldest()
    while window:
        yield oldest()


class _Writer:
    """Draws, encodes and writes one image's outputs (runs in the writer threads)."""

    def __init__(self, explainer: Explainer, options: OutputOptions, stats: RunStats):
        import keras
        import tensorflow as tf

        self.explainer = explainer
        self.options = options
        self.stats = stats
        self.labels = explainer.loaded.labels
        settings = explainer.settings(options)
        self.common = {
            "schema_version": SCHEMA_VERSION,
            "camcli_version": __version__,
            "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
            "model": explainer.loaded.describe(),
            "method": explainer.method.name,
            "method_options": explainer.method_options(),
            "score": explainer.loaded.score,
            "probability": explainer.loaded.probability,
            "settings_fingerprint": settings_fingerprint(settings),
        }

    def write(self, item: images.DecodedImage, output, i: int) -> ImageResult:
        options = self.options
        logits = output.logits[i].astype(np.float64)
        probabilities = self.explainer.loaded.probabilities(logits)
        cams = output.cams[i]
        several = cams.shape[0] > 1
        paths = OutputPaths.for_input(item.path, options.out_dir)
        width, height = item.size
        files: list[Path] = []
        explanations = []
        try:
            if options.write:
                with self.stats.time("decode"):
                    full = images.read_full(item.data, options.max_overlay_side)
            for k, index in enumerate(int(c) for c in output.targets[i]):
                label = self.labels.name(index)
                entry = {
                    "index": index,
                    "wnid": self.labels.wnid(index),
                    "label": label,
                    "logit": float(output.target_scores[i, k]),
                    "probability": float(probabilities[index]),
                    "empty": bool(output.empty[i, k]),
                    "overlay": None,
                    "heatmap": None,
                    **map_stats(cams[k], width, height).to_json(),
                }
                if options.write:
                    overlay_path = paths.overlay(index, label, several, options.overlay_format)
                    with self.stats.time("render"):
                        picture = render.overlay(full, cams[k], options.colormap, options.alpha)
                    with self.stats.time("encode"):
                        encoded = render.encode(picture, options.overlay_format)
                    with self.stats.time("write"):
                        atomic_write(overlay_path, encoded, protect=item.path)
                    files.append(overlay_path)
                    entry["overlay"] = overlay_path.name
                    if options.save_heatmap:
                        heatmap_path = paths.heatmap(index, label, several)
                        buffer = io.BytesIO()
                        np.save(buffer, cams[k])
                        atomic_write(heatmap_path, buffer.getvalue(), protect=item.path)
                        files.append(heatmap_path)
                        entry["heatmap"] = heatmap_path.name
                explanations.append(entry)
            record = {
                **self.common,
                "input": {
                    "path": str(item.path),
                    "width": width,
                    "height": height,
                    "sha256": sha256(item.data),
                },
                "predictions": self._predictions(logits, probabilities),
                "explanations": explanations,
            }
            if options.write:
                # The record goes last: its presence means every file it names is complete.
                atomic_write(paths.record, to_json_bytes(record), protect=item.path)
                files.append(paths.record)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
            return ImageResult(
                item.path, ok=False, error=f"cannot write outputs{where}: {reason}", exception=exc
            )
        except Exception as exc:  # e.g. Pillow failing on the full-resolution decode
            error = InputError(item.path, f"cannot draw the overlay: {exc!r}")
            return ImageResult(item.path, ok=False, error=error.reason, exception=exc)
        return ImageResult(item.path, ok=True, record=record, files=tuple(files), cams=cams)

    def _predictions(self, logits: np.ndarray, probabilities: np.ndarray) -> list[dict]:
        # Rank by the logits, as the engine's top_k does (ties: lower index first): softmax in
        # float64 can round nearly equal logits to equal probabilities and reorder them.
        order = np.argsort(-logits, kind="stable")[: self.explainer.top_k]
        return [
            {
                "rank": rank,
                "index": int(index),
                "wnid": self.labels.wnid(int(index)),
                "label": self.labels.name(int(index)),
                "probability": float(probabilities[index]),
            }
            for rank, index in enumerate(order, start=1)
        ]


def explain(
    paths: Iterable[str],
    *,
    recursive: bool = False,
    stdin: Iterable[str] | None = None,
    max_pixels: int | None = images.DEFAULT_MAX_PIXELS,
    skip_existing: bool = False,
    **options,
) -> Iterator[ImageResult]:
    """Explain images from files, folders, globs or ``-`` (stdin); yields one result per input.

    The other keyword arguments are those of :class:`Explainer` (``model``, ``weights``,
    ``layer``, ``method``, ``classes``, ...) and of :class:`OutputOptions` (``out_dir``,
    ``colormap``, ``alpha``, ``overlay_format``, ``save_heatmap``, ``max_overlay_side``,
    ``write``). The model is loaded before this returns, so bad options raise here.
    """
    output_fields = {f.name for f in dataclasses.fields(OutputOptions)}
    output = OutputOptions(**{k: options.pop(k) for k in list(options) if k in output_fields})
    explainer = Explainer(**options)
    return explainer.run(
        paths,
        output,
        recursive=recursive,
        stdin=stdin,
        max_pixels=max_pixels,
        skip_existing=skip_existing,
    )
