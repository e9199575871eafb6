"""keras-hub models: preset folders, preset names (the kagglehub cache), ``.keras`` files that
hold keras-hub classes, and the preprocessing their image converter states.

keras-hub is an optional dependency (``pip install 'camcli[hub]'``) and is imported only here,
only when a hub model is used: ``camcli --help`` and ``camcli models`` never import it.

The preset's preprocessor does not run inside ``model(x)``: camcli applies the image converter's
``x * scale + offset`` itself (:func:`converter_preprocess`), on the whole image resized to the
model's input, so the map covers the whole photo as for every other model.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from camcli.errors import UsageError, WeightsError

EXTRA = "pip install 'camcli[hub]'"
#: Files ``save_to_preset`` writes that mark a folder as a keras-hub preset.
PRESET_MARKERS = ("config.json", "metadata.json")


def require():
    """``keras_hub``, or a usage error naming the extra that installs it."""
    try:
        import keras_hub
    except ImportError as exc:
        raise UsageError(f"this is a keras-hub model; install keras-hub with {EXTRA}") from exc
    return keras_hub


def is_preset_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by keras-hub's ``save_to_preset``."""
    folder = Path(path)
    return folder.is_dir() and all((folder / name).is_file() for name in PRESET_MARKERS)


def file_needs_hub(path: Path) -> bool:
    """Whether a ``.keras`` file's config names keras-hub classes (it then needs keras-hub
    imported before loading: that registers them)."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = archive.read("config.json")
    except (OSError, KeyError, zipfile.BadZipFile):
        return False
    return b'"keras_hub' in config


def kagglehub_cache() -> Path:
    """Where kagglehub keeps downloaded models (``KAGGLEHUB_CACHE`` honoured)."""
    default = Path("~/.cache/kagglehub").expanduser()
    return Path(os.environ.get("KAGGLEHUB_CACHE") or default)


def cached_preset_folder(handle: str) -> Path:
    """The folder kagglehub caches ``kaggle://owner/model/framework/variation/version`` in."""
    owner, model, framework, variation, version = handle.removeprefix("kaggle://").split("/")
    return kagglehub_cache() / "models" / owner / model / framework / variation / version


def load_preset(source: str, load_weights: bool = True):
    """The ``ImageClassifier`` of a preset folder, or of a preset name from the kagglehub cache
    (downloaded when online and not cached). Raises a one-line error when it cannot."""
    from camcli import hub_presets

    folder = Path(source)
    if not is_preset_folder(folder):
        folder = cached_preset_folder(hub_presets.get(source).handle)
        if not is_preset_folder(folder):
            return _download(require(), source, folder, load_weights)
    keras_hub = require()
    try:
        return keras_hub.models.ImageClassifier.from_preset(str(folder), load_weights=load_weights)
    except Exception as exc:
        raise UsageError(f"{folder}: cannot load keras-hub preset: {_first_line(exc)}") from exc


def _download(keras_hub, name: str, folder: Path, load_weights: bool):
    try:
        return keras_hub.models.ImageClassifier.from_preset(name, load_weights=load_weights)
    except Exception as exc:  # offline: kagglehub raises connection errors of several kinds
        raise WeightsError(
            f"keras-hub preset {name!r} is not in the kagglehub cache ({folder}; set "
            f"KAGGLEHUB_CACHE to use another) and could not be downloaded "
            f"({_short(exc)}); to work offline, pass --model PATH_TO_PRESET_FOLDER "
            "(a folder written by save_to_preset)"
        ) from exc


@dataclass(frozen=True)
class Converter:
    """A keras-hub image converter's arithmetic, as camcli applies and records it."""

    scale: tuple[float, ...]  # one value, or one per channel
    offset: tuple[float, ...]
    interpolation: str
    image_size: tuple[int, int] | None

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        scale = np.asarray(self.scale, np.float32)
        offset = np.asarray(self.offset, np.float32)
        return pixels * scale + offset

    def describe(self) -> dict:
        return {
            "scale": list(self.scale),
            "offset": list(self.offset),
            "interpolation": self.interpolation,
            "image_size": list(self.image_size) if self.image_size else None,
        }


def converter_of(model) -> Converter | None:
    """The image converter of a keras-hub task's preprocessor, or None when it has none."""
    converter = getattr(getattr(model, "preprocessor", None), "image_converter", None)
    if converter is None:
        return None
    size = getattr(converter, "image_size", None)
    return Converter(
        scale=_values(getattr(converter, "scale", None), 1.0),
        offset=_values(getattr(converter, "offset", None), 0.0),
        interpolation=str(getattr(converter, "interpolation", "bilinear")),
        image_size=tuple(int(v) for v in size) if size else None,
    )


def _values(value, default: float) -> tuple[float, ...]:
    if value is None:
        return (default,)
    return tuple(float(v) for v in np.ravel(np.asarray(value, dtype=np.float64)))


def is_hub_model(model) -> bool:
    """Whether ``model`` is a keras-hub task (without importing keras-hub)."""
    return type(model).__module__.startswith("keras_hub")


def _short(exc: BaseException) -> str:
    """The exception's first line, cut before its nested causes (kagglehub's are long)."""
    return _first_line(exc).split(" (Caused by")[0].split(": HTTPSConnectionPool")[0][:160]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
