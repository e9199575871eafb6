"""Every command-line option, declared once (in the spirit of httpie's option spec).

An option is a :class:`Spec`: its parameter name, type, default and Typer declaration. Options
come in groups, named by what they feed: :data:`MODEL` becomes the keyword arguments of
:class:`~camcli.api.Explainer`, :data:`RENDER` those of the overlays, and so on. A command is
declared with :func:`command` and the groups it takes; its function receives every option as a
keyword argument and makes one call into the library. An option shared by two commands is
therefore written once, and cannot drift between them.

The audit's threshold options are generated from :data:`camcli.audit.checks.THRESHOLDS`, so a
new threshold needs only its row in that table. Method names in ``--method``'s help come from
:data:`camcli.methods.METHODS`.

Importing this module imports neither TensorFlow nor Keras.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from camcli.audit.checks import THRESHOLDS
from camcli.limits import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_READ_LIMIT,
    READ_BYTES_PER_PIXEL,
    READ_MARGIN_BYTES,
)
from camcli.methods import DEFAULT_CHUNK_SIZE, method_names
from camcli.render import COLORMAPS, DEFAULT_MAX_OVERLAY_SIDE, OVERLAY_FORMATS


@dataclass(frozen=True)
class Spec:
    """One option: ``name`` is the parameter the command function receives."""

    name: str
    type: Any
    default: Any
    flags: tuple[str, ...]
    help: str
    extra: tuple[tuple[str, Any], ...] = ()  # more typer.Option arguments, e.g. is_flag

    def parameter(self) -> inspect.Parameter:
        option = typer.Option(*self.flags, help=self.help, **dict(self.extra))
        return inspect.Parameter(
            self.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=self.default,
            annotation=Annotated[self.type, option],
        )

    def but(self, **changes) -> Spec:
        """The same option with another default or help (e.g. the audit's overlay size)."""
        return dataclasses.replace(self, **changes)


def spec(name: str, type_, default, *flags: str, help: str, **extra) -> Spec:
    flags = flags or ("--" + name.replace("_", "-"),)
    return Spec(name, type_, default, tuple(flags), help, tuple(extra.items()))


def only(group: tuple[Spec, ...], *names: str) -> tuple[Spec, ...]:
    """The options of ``group`` called ``names`` (for a command that takes a few of them)."""
    by_name = {s.name: s for s in group}
    return tuple(by_name[name] for name in names)


def pick(options: dict, group: tuple[Spec, ...]) -> dict:
    """The values of ``group``'s options, removed from ``options``."""
    return {s.name: options.pop(s.name) for s in group if s.name in options}


def command(app: typer.Typer, *groups: tuple[Spec, ...], **settings):
    """Register ``function`` as a command taking its own parameters plus every option of
    ``groups`` (passed to it as keyword arguments)."""

    def decorate(function):
        signature = inspect.signature(function, eval_str=True)
        own = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
        added = [s.parameter() for group in groups for s in group]
        names = [p.name for p in own + added]
        duplicated = {name for name in names if names.count(name) > 1}
        if duplicated:
            raise TypeError(f"{function.__name__}: options declared twice: {sorted(duplicated)}")

        @functools.wraps(function)
        def wrapper(**kwargs):
            return function(**kwargs)

        wrapper.__signature__ = signature.replace(parameters=own + added)
        wrapper.__annotations__ = {}  # the signature carries the resolved annotations
        return app.command(**settings)(wrapper)

    return decorate


# --------------------------------------------------------------------------- the model and method

MODEL_HELP = ("Registry name or keras-hub preset (see `camcli models`), a .keras/.h5 model file "
              "or a keras-hub preset folder.")
WEIGHTS_HELP = (
    "'imagenet' (bundled for the models `camcli models` marks so, else downloaded once into "
    "the Keras cache), 'none' (random) or a file."
)

MODEL: tuple[Spec, ...] = (
    spec("model", str, "resnet50", "--model", "-m", help=MODEL_HELP),
    spec("weights", str, "imagenet", help=WEIGHTS_HELP),
    spec("layer", list[str] | None, None, "--layer", "-l",
         help="Target layer (default: the model's); nested: outer/inner. Repeat to fuse."),
    spec("method", str, "gradcam", help=f"CAM method: {method_names()}."),
    spec("fuse", str, "mean", help="Combine several layers' maps: mean or max."),
    spec("aug_smooth", bool, False,
         help="Average over flips and scales (6 passes; smoother maps)."),
    spec("eigen_smooth", bool, False,
         help="Keep the first principal component of the weighted maps."),
    spec("scorecam_batch", int, DEFAULT_CHUNK_SIZE,
         help="Score-/Ablation-CAM: masked inputs or ablated channels per model call."),
    spec("scorecam_channels", int | None, None,
         help="Score-CAM: only the N highest-variance channels (faster)."),
    spec("method_option", list[str] | None, None, "--method-option",
         help="A method's own option NAME=VALUE (repeatable; see the README's methods), e.g. "
         "k=3 (fem), kernel=rbf (kpcacam), base=layercam (finercam), samples=8, seed=1."),
    spec("discard_ratio", float, 0.0,
         help="rollout: drop this fraction of each layer's lowest attentions (0 = the paper's)."),
    spec("head_fusion", str, "mean", help="rollout: combine attention heads by mean, max or min."),
    spec("preprocess", str | None, None,
         help="none, scale01, tf, caffe, torch or a registry model name "
         "(default: the registry model's own; none for model files)."),
    spec("labels", Path | None, None,
         help="Class names: a text file (one per line) or a JSON list/dict."),
    spec("output", str | None, None,
         help="Classification output (name or index) of a multi-output model."),
    spec("unsafe_model", bool, False,
         help="Allow model files that run Python code (Lambda layers)."),
    spec("batch_size", int, 16, help="Images per model call."),
    spec("precision", str, "float32",
         help="Arithmetic of the network: float32 (exact, reproducible), bfloat16 or float16 "
         "(Keras mixed precision; scores and maps stay float32). Reduced precision is fast only "
         "on a GPU or, for bfloat16, a CPU with AVX-512 BF16/AMX; elsewhere it is slower and "
         "camcli warns."),
)

#: Which classes a run explains (``explain`` only: an audit explains the expected class).
TARGETS: tuple[Spec, ...] = (
    spec("classes", list[str] | None, None, "--class", "-c",
         help="Class to explain: index, WordNet id or label (repeatable)."),
    spec("top_k_cams", int | None, None, help="Explain each image's N best classes."),
)

TOP_K = spec("top_k", int, 5, help="Predictions listed in the JSON.")

# --------------------------------------------------------------------------- outputs

RENDER: tuple[Spec, ...] = (
    spec("colormap", str, "jet", help=f"Overlay colormap: {', '.join(COLORMAPS)}."),
    spec("alpha", float, 0.4, help="Heatmap opacity in the overlay (0-1)."),
    spec("max_overlay_side", int, DEFAULT_MAX_OVERLAY_SIDE,
         help="Cap the overlay's longer side (pixels; never upscaled); 0 keeps the input's "
         "full resolution. The JSON stays in input pixels."),
)

#: The files ``explain`` writes beside (or under ``--out-dir``) each input.
OUTPUTS: tuple[Spec, ...] = (
    spec("out_dir", str | None, None, "--out-dir", "-o",
         help="Write outputs here (a folder or a URL prefix), mirroring input paths."),
    spec("overlay_format", str, "png", help=f"{', '.join(OVERLAY_FORMATS)}."),
    spec("save_heatmap", bool, False, help="Also write the raw normalised map (.npy)."),
)

# --------------------------------------------------------------------------- inputs and the run

INPUTS: tuple[Spec, ...] = (
    spec("recursive", bool, False, "--recursive", "-r", help="Descend folders."),
    spec("follow_symlinks", bool, True, "--follow-symlinks/--no-follow-symlinks",
         help="In folders, follow symbolic links to files and folders, even out of the tree "
         "(--no-follow-symlinks: skip them and stay inside, as find -P; names given are "
         "always followed)."),
    spec("skip_existing", bool, False,
         help="Skip inputs whose outputs are complete, newer and made the same way."),
    spec("shard", str | None, None,
         help="Take only shard K/N of the inputs (K from 1), chosen by a stable digest of "
         "each path or URL; 'auto': K and N from a Slurm job array or a Kubernetes Indexed Job."),
)

#: Passed to the fsspec backend of every URL (inputs and --out-dir).
STORAGE = spec("storage_option", list[str] | None, None, "--storage-option",
               help="KEY=VALUE for the URL backends (s3fs, gcsfs...), e.g. anon=true or "
               "endpoint_url=http://minio:9000; JSON values allowed; repeatable.")

#: Where the batches run: this process, or a Ray cluster (:mod:`camcli.distributed.ray`).
ENGINE = spec("engine", str, "local",
              help="local (this process) or ray (a Ray cluster; pip install 'camcli\\[ray]').")

#: ``--engine ray``: which cluster, and how wide (the keyword arguments of ``RayOptions``).
RAY: tuple[Spec, ...] = (
    spec("ray_address", str | None, None,
         help="Ray cluster: host:port, ray://host:10001 or auto (default: RAY_ADDRESS, "
         "else a local Ray instance for the run)."),
    spec("ray_workers", int | None, None,
         help="Ray workers, each loading the model once (default: as many as fit)."),
    spec("ray_cpus", float | None, None,
         help="CPUs per Ray worker, its TensorFlow threads (default 4, at most a node's)."),
    spec("ray_gpus", float, 0.0, help="GPUs per Ray worker."),
)

MAX_PIXELS = spec("max_pixels", int, DEFAULT_MAX_PIXELS,
                  help="Refuse images declaring more pixels (decompression bombs).")
MAX_INPUT_BYTES = spec("max_input_bytes", int | None, None,
                       help=f"Read at most this many bytes of an input; larger ones fail "
                       f"(default: {READ_BYTES_PER_PIXEL} bytes per --max-pixels pixel + "
                       f"{READ_MARGIN_BYTES >> 20} MiB, {DEFAULT_READ_LIMIT:,} by default).")

RUN: tuple[Spec, ...] = (
    spec("threads", int | None, None,
         help="TensorFlow threads (default: TensorFlow's own choice, all cores)."),
    spec("quiet", bool, False, "--quiet", "-q", help="No progress bar or summary lines."),
    spec("debug", bool, False, help="Show tracebacks and TensorFlow logs."),
)

# --------------------------------------------------------------------------- run reports

#: ``explain --report DIR``: the run's report at the end of the run.
RUN_REPORT = spec("report", Path | None, None,
                  help="At the end, write this run's report (index.html, thumbs/) here.")

#: ``camcli report``: where the page goes and what it is called.
REPORT: tuple[Spec, ...] = (
    spec("out", Path, Path("camcli-report"), "--out", "-o",
         help="Folder for index.html and thumbs/."),
    spec("title", str | None, None, help="The page's title."),
)

AS_JSON = spec("as_json", bool, False, "--json", help="Print JSON instead of a table.")
JSON_LINES = AS_JSON.but(help="Print one JSON line per image on stdout.")

# --------------------------------------------------------------------------- audit

#: One option per threshold of the audit's table: ``--min-top1``, ``--max-deletion-auc``, ...
THRESHOLD_OPTIONS: tuple[Spec, ...] = tuple(
    spec(t.name, float | None, None, t.option, help=f"Check: {t.help}.") for t in THRESHOLDS
)

AUDIT: tuple[Spec, ...] = (
    spec("out", Path, Path("camcli-audit"), "--out", "-o",
         help="Folder for audit.json, junit.xml, summary.md, report.html and overlays/."),
    spec("baseline", Path | None, None,
         help="An earlier audit.json of the same manifest: report what changed."),
    spec("allow_precision_change", bool, False,
         help="Compare with a --baseline made at another --precision."),
    spec("steps", int, 20, help="Deletion/insertion steps."),
    spec("blur_sigma", float | None, None,
         help="Deletion/insertion baseline blur σ, input pixels (default 10 at 224)."),
    spec("pointing_tolerance", float | None, None,
         help="Pointing-game tolerance, input pixels (default 15 at 224)."),
    spec("mean", list[str] | None, None, "--mean",
         help="Check on the manifest's mean, not per image: NAME=VALUE with a threshold "
         "name, e.g. min_energy_in_box=0.3 or min_top1=0.9 (repeatable)."),
    spec("score_batch", int, 64, help="Perturbed images per model call (faithfulness)."),
)
