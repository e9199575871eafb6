"""The Python entry points: everything the CLI does goes through here.

:class:`Explainer` is a short facade over the model (:mod:`camcli.loading`), the method
(:mod:`camcli.methods`) and the engine (:mod:`camcli.engine`); it is the only place engines are
made. ``explain(paths, ...)`` streams :class:`ImageResult` objects from a local run
(:mod:`camcli.runner`), which calls the batch core (:mod:`camcli.pipeline`) that every front end
shares.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from camcli import images, storage
from camcli.errors import UsageError
from camcli.methods import DEFAULT_CHUNK_SIZE
from camcli.pipeline import EAGER_MAX_IMAGES, ImageResult, OutputOptions, Pipeline, RunStats
from camcli.sharding import Shard

__all__ = ["EAGER_MAX_IMAGES", "Explainer", "ImageResult", "OutputOptions", "RunStats", "explain"]

DEFAULT_BATCH_SIZE = 16


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
        classes: Iterable[int | str] | None = (),
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
        scorecam_batch: int = DEFAULT_CHUNK_SIZE,
        scorecam_channels: int | None = None,
        method_option: Sequence[str] | dict | None = None,
        precision: str = "float32",
        discard_ratio: float = 0.0,
        head_fusion: str = "mean",
    ):
        from camcli import engine, loading
        from camcli.methods import get_method, parse_method_options
        from camcli.precision import warn_if_slow

        classes = list(classes or ())
        _check_counts(batch_size, top_k, top_k_cams, classes)
        self.method = get_method(method, chunk_size=scorecam_batch, channels=scorecam_channels,
                                 discard_ratio=discard_ratio, head_fusion=head_fusion,
                                 **parse_method_options(method, method_option))
        try:
            self.cam_options = engine.CamOptions(
                eigen_smooth=eigen_smooth, aug_smooth=aug_smooth, fuse=fuse
            )
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        self.loaded = loading.load(
            model,
            weights=weights,
            layer=layer or None,
            preprocess=preprocess,
            labels=labels,
            output=output,
            unsafe=unsafe_model,
            precision=precision,
        )
        engine.attention_capture(self.loaded, self.method)  # a usage error if it cannot apply
        #: Why ``precision`` is slow on this machine (warned once), or None.
        self.slow_precision = warn_if_slow(precision)
        labels = self.loaded.labels
        resolved = tuple(dict.fromkeys(labels.resolve(c) for c in classes))
        self.targets = engine.Targets(classes=resolved or None, top=top_k_cams or 1)
        self.top_k = min(top_k, len(labels))
        self.batch_size = batch_size
        self._engines: dict = {}
        # Built now, not at the first batch: a method that does not fit the model (CAM on a
        # model without its pooling + dense head) is a usage error before any input is read.
        self.engine()

    # ----------------------------------------------------------------- compute only

    def engine(self, compiled: bool = True, classes: tuple[int, ...] | None = None):
        """The engine for this model and method, explaining the run's targets or the given
        ``classes`` (one trace per variant, kept for reuse). The only engine factory."""
        from camcli.engine import Engine, Targets

        targets = self.targets if classes is None else Targets(classes=tuple(classes))
        key = (targets, compiled)
        if key not in self._engines:
            self._engines[key] = Engine(
                self.loaded, targets, self.method, compiled, self.cam_options
            )
        return self._engines[key]

    def preprocess(self, pixels: np.ndarray) -> np.ndarray:
        """Apply the model's preprocessing to a uint8 batch at the model's input size."""
        return self.loaded.preprocess(np.asarray(pixels, dtype=np.float32).copy())

    def explain_arrays(self, pixels: np.ndarray, compiled: bool | None = None, classes=None):
        """Explain a batch of RGB images already at the model's input size (for notebooks).

        Returns the engine's :class:`~camcli.engine.BatchOutput` (logits, targets, maps).
        ``classes``: explain these class indices instead of the run's targets.
        """
        pixels = np.asarray(pixels)
        if compiled is None:
            compiled = len(pixels) > EAGER_MAX_IMAGES
        return self.engine(compiled, classes).run(self.preprocess(pixels))

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
        return {**recorded, **self.method.recorded_options()}

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
            **options.settings(),
        }

    def pipeline(self, options: OutputOptions | None = None, stats: RunStats | None = None,
                 stop: threading.Event | None = None):
        """The batch core for this explainer and these output options."""
        return Pipeline(self, options, stats, stop)

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
        shard: Shard | None = None,
        storage_options: storage.StorageOptions = storage.NO_OPTIONS,
        max_input_bytes: int | None = None,
        follow_symlinks: bool = True,
    ) -> Iterator[ImageResult]:
        """Explain every input found in ``paths`` (those of ``shard`` only, when given: see
        :mod:`camcli.sharding`), yielding one result per input.

        ``skip_existing``: inputs whose outputs are complete, newer than the input and made with
        the same settings are yielded as skipped without being decoded. ``stop``: when set (the
        CLI sets it on SIGINT/SIGTERM), no new input is started; the images already decoded are
        finished and written, then the run ends. ``stats``: filled with per-stage timings.
        ``storage_options``: passed to the fsspec backend of every URL input.
        ``max_input_bytes``: read at most this much of an input (default: from ``max_pixels``,
        :func:`camcli.limits.read_limit`). ``follow_symlinks=False``: folders contribute no
        symbolic link (file or folder) found inside them.
        """
        from camcli.runner import Inputs, run_local

        inputs = Inputs(
            tuple(paths), recursive, stdin, max_pixels, skip_existing, shard, storage_options,
            max_input_bytes, follow_symlinks,
        )
        pipeline = self.pipeline(options, stats, stop)
        return run_local(pipeline, inputs, self.batch_size, workers, stop)


def check_options(options: dict) -> None:
    """The checks of :class:`Explainer`'s keyword arguments that need no model: what a Ray
    driver runs before it reaches for a cluster (the workers load the model)."""
    from camcli import loading, registry
    from camcli.methods import get_method, parse_method_options

    classes = list(options.get("classes") or ())
    _check_counts(options.get("batch_size", DEFAULT_BATCH_SIZE), options.get("top_k", 5),
                  options.get("top_k_cams"), classes)
    method = options.get("method", "gradcam")
    get_method(method, chunk_size=options.get("scorecam_batch", DEFAULT_CHUNK_SIZE),
               channels=options.get("scorecam_channels"),
               discard_ratio=options.get("discard_ratio", 0.0),
               head_fusion=options.get("head_fusion", "mean"),
               **parse_method_options(method, options.get("method_option")))
    model = options.get("model", "resnet50")
    from camcli import hub, hub_presets

    if hub.is_preset_folder(model) or hub_presets.get(model) is not None:
        return
    if not loading.is_model_file(model):
        registry.get_spec(model)
    elif not os.path.isfile(model):
        raise UsageError(f"{model}: model file not found")


def _check_counts(batch_size: int, top_k: int, top_k_cams: int | None, classes: list) -> None:
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, not {batch_size}")
    if top_k < 1:
        raise UsageError(f"--top-k must be at least 1, not {top_k}")
    if top_k_cams is not None and top_k_cams < 1:
        raise UsageError(f"--top-k-cams must be at least 1, not {top_k_cams}")
    if classes and top_k_cams:
        raise UsageError("give either --class or --top-k-cams, not both")


def take_output_options(options: dict, storage_options: dict | None = None) -> OutputOptions:
    """The :class:`OutputOptions` among a Python caller's keyword arguments (removed from
    ``options``, which keeps the Explainer's), their URL backends given ``storage_options``."""
    store = storage.StorageOptions(tuple((storage_options or {}).items()))
    fields = {f.name for f in dataclasses.fields(OutputOptions)}
    chosen = {k: options.pop(k) for k in list(options) if k in fields}
    return OutputOptions(**{**chosen, "storage_options": store})


def explain(
    paths: Iterable[str],
    *,
    recursive: bool = False,
    stdin: Iterable[str] | None = None,
    max_pixels: int | None = images.DEFAULT_MAX_PIXELS,
    skip_existing: bool = False,
    shard: Shard | str | None = None,
    storage_options: dict | None = None,
    max_input_bytes: int | None = None,
    follow_symlinks: bool = True,
    **options,
) -> Iterator[ImageResult]:
    """Explain images from files, folders, globs or ``-`` (stdin); yields one result per input.

    The other keyword arguments are those of :class:`Explainer` (``model``, ``weights``,
    ``layer``, ``method``, ``classes``, ...) and of :class:`OutputOptions` (``out_dir``,
    ``colormap``, ``alpha``, ``overlay_format``, ``save_heatmap``, ``max_overlay_side``,
    ``write``). ``shard``: a :class:`~camcli.sharding.Shard`, ``"K/N"`` or ``"auto"``. Paths
    and ``out_dir`` may be URLs (:mod:`camcli.storage`), their backends given
    ``storage_options``; a prefix that cannot be listed raises before the model loads. The
    model is loaded before this returns, so bad options raise here.
    """
    from camcli.sharding import parse

    shard = parse(shard) if isinstance(shard, str) else shard
    output = take_output_options(options, storage_options)
    store = output.storage_options
    paths = list(paths)
    storage.preflight(paths, output.out_dir, store)
    explainer = Explainer(**options)
    return explainer.run(
        paths,
        output,
        recursive=recursive,
        stdin=stdin,
        max_pixels=max_pixels,
        skip_existing=skip_existing,
        shard=shard,
        storage_options=store,
        max_input_bytes=max_input_bytes,
        follow_symlinks=follow_symlinks,
    )
