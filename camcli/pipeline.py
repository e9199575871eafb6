"""The batch core: one batch from decoded images to records and written files.

Every front end calls this module: the local run (:mod:`camcli.runner`), the audit and a
worker process elsewhere. A :class:`Pipeline` is made once per run from an
:class:`~camcli.api.Explainer` and :class:`OutputOptions`; its per-batch functions take decoded
images (:class:`~camcli.images.DecodedImage`) and return :class:`ImageResult` objects without
knowing where the images came from or who scheduled the batch:

- :meth:`Pipeline.compute`: the engine on a whole batch (the model's thread);
- :meth:`Pipeline.finish`: one image's overlay, record and files (any thread);
- :meth:`Pipeline.run_batch`: both, for a caller that has nothing to overlap.

The record is assembled in one pure function, :func:`build_record`, from parts that the audit
uses too (:func:`provenance`, :func:`describe_input`, :func:`rank_predictions`);
:func:`write_outputs` does the atomic I/O, the record last. A ``--json`` line of any kind (done,
skipped, failed) is assembled in :func:`build_line`, around the record.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from camcli import __version__, images, native_stderr, render, storage
from camcli.errors import InputError, UsageError
from camcli.heatmaps import map_stats
from camcli.outputs import (
    SCHEMA_VERSION,
    OutputPaths,
    atomic_write,
    is_camcli_output,
    locked,
    settings_fingerprint,
    sha256,
    to_json_bytes,
)

#: Runs with at most this many images use the eager step: tracing would cost more than it saves.
EAGER_MAX_IMAGES = 2


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
        """One line of ``--json`` output (:func:`build_line`)."""
        return build_line(self.path, self.record, self.files, self.error, self.skipped)

    @classmethod
    def failed(cls, path, reason: str, exception: BaseException | None = None) -> ImageResult:
        return cls(storage.location(path), ok=False, error=reason, exception=exception)


class RunStats:
    """Seconds spent per pipeline stage, summed over threads, to show where a run's time goes,
    and how many inputs were listed and taken (all of them, or those of a ``--shard``).

    ``decode``, ``render``, ``encode`` and ``write`` run in worker threads; ``compute`` is the
    engine; ``input_wait`` is the model's thread waiting for decoded images and ``output_wait``
    it waiting for the writers to make room (back-pressure).
    """

    STAGES = ("decode", "compute", "render", "encode", "write", "input_wait", "output_wait")

    def __init__(self):
        self.seconds = dict.fromkeys(self.STAGES, 0.0)
        self.images = 0
        self.listed = 0
        self.taken = 0
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

    out_dir: Path | storage.Url | None = None  # a folder, or a URL prefix (text is parsed)
    colormap: str = "jet"
    alpha: float = 0.4
    overlay_format: str = "png"
    save_heatmap: bool = False
    max_overlay_side: int | None = render.DEFAULT_MAX_OVERLAY_SIDE  # 0 or None: full size
    write: bool = True
    storage_options: storage.StorageOptions = storage.NO_OPTIONS  # for a URL out_dir

    def __post_init__(self):
        object.__setattr__(self, "out_dir", storage.location(self.out_dir, self.storage_options))
        render.colormap(self.colormap)  # fails early on an unknown name
        if self.overlay_format not in render.OVERLAY_FORMATS:
            raise UsageError(
                f"unknown overlay format {self.overlay_format!r}; "
                f"choose from {', '.join(render.OVERLAY_FORMATS)}"
            )
        if not 0.0 <= self.alpha <= 1.0:
            raise UsageError(f"--alpha must be between 0 and 1, not {self.alpha}")
        if self.max_overlay_side is not None and self.max_overlay_side < 0:
            raise UsageError(
                f"--max-overlay-side must be 0 (full resolution) or more, "
                f"not {self.max_overlay_side}"
            )
        object.__setattr__(self, "max_overlay_side", self.max_overlay_side or 0)

    def settings(self) -> dict:
        """The options that change the outputs' content (hashed into the fingerprint)."""
        return {
            "colormap": self.colormap,
            "alpha": self.alpha,
            "overlay_format": self.overlay_format,
            "save_heatmap": self.save_heatmap,
            "max_overlay_side": self.max_overlay_side,
        }


# --------------------------------------------------------------------------- the record


def provenance(explainer) -> dict:
    """What made every record of a run: versions, model, method and the score explained."""
    import keras
    import tensorflow as tf

    loaded = explainer.loaded
    return {
        "camcli_version": __version__,
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "model": loaded.describe(),
        "method": explainer.method.name,
        "method_options": explainer.method_options(),
        "score": loaded.score,
        "probability": loaded.probability,
    }


def describe_input(
    path: Path | str, size: tuple[int, int] | None = None, data: bytes | None = None
) -> dict:
    """The ``input`` field: where the image came from, its upright size, its bytes' hash; the
    same keys for an input that was not read (failed, skipped), with null size and hash."""
    width, height = size or (None, None)
    described = {"path": str(path), "width": width, "height": height,
                 "sha256": None if data is None else sha256(data)}
    if data is not None and storage.is_url(path):  # the version --skip-existing compares
        described["object"] = storage.version(path)
    return described


def rank_predictions(labels, logits: np.ndarray, probabilities: np.ndarray, top_k: int):
    """The ``predictions`` field: the ``top_k`` classes, best first.

    Ranked by the logits, as the engine's top_k is (ties: lower index first): softmax in float64
    can round nearly equal logits to equal probabilities and reorder them.
    """
    order = np.argsort(-np.asarray(logits), kind="stable")[:top_k]
    return [
        {
            "rank": rank,
            "index": int(index),
            "wnid": labels.wnid(int(index)),
            "label": labels.name(int(index)),
            "probability": float(probabilities[index]),
        }
        for rank, index in enumerate(order, start=1)
    ]


def build_record(
    run: dict, fingerprint: str, input: dict, predictions: list, explanations: list
) -> dict:
    """One image's JSON record (schema :data:`~camcli.outputs.SCHEMA_VERSION`): the only place
    its top-level keys are assembled. ``run`` is :func:`provenance`."""
    return {
        "schema_version": SCHEMA_VERSION,
        **run,
        "settings_fingerprint": fingerprint,
        "input": input,
        "predictions": predictions,
        "explanations": explanations,
    }


def build_line(
    path, record: dict | None = None, files: Iterable = (), error: str | None = None,
    skipped: bool = False,
) -> dict:
    """One ``--json`` line (schema :data:`~camcli.outputs.SCHEMA_VERSION`, written down in
    ``camcli/data/record.schema.json``): the only place its keys are assembled. Every kind of
    line — done (``record`` given), skipped, failed (``error`` given) — has ``schema_version``,
    ``ok``, ``skipped``, ``error``, ``input`` (always an object) and ``files``, each of one
    type; a done line also has every key of the record."""
    return {
        **(record or {}),
        "schema_version": SCHEMA_VERSION,
        "ok": error is None,
        "skipped": skipped,
        "error": error,
        "input": record["input"] if record else describe_input(path),
        "files": [str(f) for f in files],
    }


def write_outputs(files: Iterable[tuple[Path, bytes]], record: tuple[Path, bytes], protect: Path,
                  stop: threading.Event | None = None):
    """Write each ``(path, bytes)`` atomically, then the record: its presence means every file
    it names is complete and is the one it names. ``protect`` (the input) is never overwritten.
    Returns the paths. A URL is put whole, in one call (:func:`camcli.storage.put`).

    A local set is written under :func:`~camcli.outputs.locked`, so another run waits
    meanwhile (until ``stop`` is set: then this input fails as interrupted). An earlier record
    is removed first, so a set half replaced has no record; when a write fails (a full disk),
    the files this call wrote are removed again: nothing is left that no record names.
    """
    outputs = [*files, record]
    if storage.is_url(record[0]):
        for path, data in outputs:
            storage.put(path, data, protect, replaceable=is_camcli_output(path.name))
        return tuple(path for path, _ in outputs)
    protect = None if storage.is_url(protect) else protect
    written: list[Path] = []
    with locked(record[0], first=outputs[0][0], stop=stop):
        try:
            with contextlib.suppress(FileNotFoundError):
                if protect is None or not os.path.samefile(record[0], protect):
                    os.unlink(record[0])
            for path, data in outputs:
                atomic_write(path, data, protect=protect)
                written.append(path)
        except BaseException:
            for path in written:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            raise
    return tuple(written)


# --------------------------------------------------------------------------- the batch core


class _Stage(Exception):
    """A failure while drawing or writing, with the stage that failed in its reason."""

    def __init__(self, reason: str, cause: BaseException):
        super().__init__(reason)
        self.reason, self.cause = reason, cause


class Pipeline:
    """Explains batches of decoded images and writes their outputs (see the module doc)."""

    def __init__(self, explainer, options: OutputOptions | None = None, stats=None,
                 stop: threading.Event | None = None):
        self.explainer = explainer
        self.stop = stop  # set on SIGINT/SIGTERM: waits for another run's lock end
        self.options = options or OutputOptions()
        self.stats = stats or RunStats()
        self.labels = explainer.loaded.labels
        self.run = provenance(explainer)
        self.fingerprint = settings_fingerprint(explainer.settings(self.options))

    def paths(self, path: Path) -> OutputPaths:
        """Where ``path``'s outputs go; :class:`~camcli.outputs.UnsafeOutputPath` (an
        InputError) when no place under ``--out-dir`` is safe for them."""
        return OutputPaths.for_input(path, self.options.out_dir)

    def compute(self, items: list[images.DecodedImage], compiled: bool | None = None):
        """The engine's :class:`~camcli.engine.BatchOutput` for a batch of decoded images."""
        with self.stats.time("compute"):
            output = self.explainer.explain_arrays(
                np.stack([item.pixels for item in items]), compiled
            )
        self.stats.images += len(items)
        return output

    def run_batch(self, items: list[images.DecodedImage], pool=None) -> list[ImageResult]:
        """:meth:`compute` then :meth:`finish` for every image (on ``pool`` if given)."""
        if not items:
            return []
        output = self.compute(items, compiled=True)
        if pool is None:
            return [self.finish(item, output, i) for i, item in enumerate(items)]
        return list(pool.map(lambda i: self.finish(items[i], output, i), range(len(items))))

    def finish(self, item: images.DecodedImage, output, i: int) -> ImageResult:
        """Image ``i`` of ``output``: its record, and with ``write`` its files."""
        logits = output.logits[i].astype(np.float64)
        probabilities = self.explainer.loaded.probabilities(logits)
        try:
            explanations, files = self._explanations(item, output, i, probabilities)
            record = build_record(
                self.run,
                self.fingerprint,
                describe_input(item.path, item.size, item.data),
                rank_predictions(self.labels, logits, probabilities, self.explainer.top_k),
                explanations,
            )
            written = ()
            if self.options.write:
                record_file = (self.paths(item.path).record, _record_bytes(record))
                with self.stats.time("write"):
                    written = write_outputs(files, record_file, item.path, self.stop)
        except _Stage as failure:
            return ImageResult.failed(item.path, failure.reason, failure.cause)
        except InputError as exc:  # no safe place for its outputs (outputs.output_base)
            return ImageResult.failed(item.path, exc.reason, exc)
        except OSError as exc:
            return ImageResult.failed(item.path, _write_failure(exc), exc)
        return ImageResult(item.path, ok=True, record=record, files=written, cams=output.cams[i])

    def _explanations(self, item, output, i: int, probabilities):
        """Each explained class's record entry, and the encoded files that go with them."""
        options, cams = self.options, output.cams[i]
        several = cams.shape[0] > 1
        paths = self.paths(item.path)
        full = self._full_image(item) if options.write else None
        entries, files = [], []
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
                "overlay_sha256": None,
                "overlay_bytes": None,
                "overlay_width": None,
                "overlay_height": None,
                "heatmap": None,
                "heatmap_sha256": None,
                "heatmap_bytes": None,
                **map_stats(cams[k], *item.size).to_json(),
            }
            if options.write:
                overlay_path = paths.overlay(index, label, several, options.overlay_format)
                files.append((overlay_path, self._overlay(full, cams[k])))
                entry["overlay"] = overlay_path.name
                entry["overlay_sha256"], entry["overlay_bytes"] = _digest(files[-1][1])
                entry["overlay_width"], entry["overlay_height"] = full.size
                if options.save_heatmap:
                    heatmap_path = paths.heatmap(index, label, several)
                    buffer = io.BytesIO()
                    np.save(buffer, cams[k])
                    files.append((heatmap_path, buffer.getvalue()))
                    entry["heatmap"] = heatmap_path.name
                    entry["heatmap_sha256"], entry["heatmap_bytes"] = _digest(files[-1][1])
            entries.append(entry)
        return entries, files

    def overlay_side(self) -> int | None:
        """The overlay's longer side to decode together with the model's view (the decode
        stage's ``overlay_side``): None when nothing is drawn or the overlay is full size."""
        options = self.options
        return options.max_overlay_side if options.write and options.max_overlay_side else None

    def _full_image(self, item):
        """The picture the overlay is drawn on (its longer side capped at
        ``max_overlay_side``): decoded with the model's view, or now from the same bytes."""
        if item.picture is not None:
            return item.picture
        try:
            with self.stats.time("decode"), native_stderr.decoding(item.path):
                return images.read_full(item.data, self.options.max_overlay_side)
        except Exception as exc:  # truncated or broken beyond what the model's decode read
            raise _Stage(f"cannot decode image at full resolution: {_describe(exc)}", exc) from exc

    def _overlay(self, full, cam) -> bytes:
        options = self.options
        try:
            with self.stats.time("render"):
                picture = render.overlay(full, cam, options.colormap, options.alpha)
        except Exception as exc:
            raise _Stage(f"cannot draw the overlay: {_describe(exc)}", exc) from exc
        try:
            with self.stats.time("encode"):
                return render.encode(picture, options.overlay_format)
        except Exception as exc:
            fmt = options.overlay_format.upper()
            raise _Stage(f"cannot encode the overlay as {fmt}: {_describe(exc)}", exc) from exc


def _digest(data: bytes) -> tuple[str, int]:
    """What a record says of a file it names: its sha256 and its size (checked first)."""
    return sha256(data), len(data)


def _record_bytes(record: dict) -> bytes:
    try:
        return to_json_bytes(record)
    except (TypeError, ValueError) as exc:  # e.g. a NaN score: not JSON
        raise _Stage(f"cannot encode the JSON record: {_describe(exc)}", exc) from exc


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _write_failure(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
    return f"cannot write outputs{where}: {reason}"
