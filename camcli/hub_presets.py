"""keras-hub's image-classifier presets, listed without importing keras-hub or TensorFlow.

The rows are a generated table (:mod:`camcli.hub_presets_table`, from
``tools/generate_hub_presets.py``); ``tests/test_hub.py`` checks it against the installed
keras-hub. Names resolve with the registry's normalisation (case, ``-`` and ``_`` ignored).
"""

from __future__ import annotations

from dataclasses import dataclass

from camcli.hub_presets_table import KERAS_HUB_VERSION, PRESETS
from camcli.registry import normalize

__all__ = ["KERAS_HUB_VERSION", "HubPreset", "get", "list_presets"]


@dataclass(frozen=True)
class HubPreset:
    """One keras-hub ``ImageClassifier`` preset."""

    name: str
    family: str
    input_size: int | None  # as the name states it; otherwise the preset's converter sets it
    parameters: int | None
    handle: str  # kaggle://owner/model/keras/variation/version

    def weights_status(self) -> str:
        """``cached`` when the kagglehub cache holds the preset, else ``download``."""
        from camcli import hub

        cached = hub.is_preset_folder(hub.cached_preset_folder(self.handle))
        return "cached" if cached else "download"

    def to_dict(self) -> dict:
        size = [self.input_size, self.input_size] if self.input_size else None
        return {
            "name": self.name,
            "family": self.family,
            "source": "keras-hub",
            "input_size": size,
            "parameters": self.parameters,
            "weights": self.weights_status(),
        }


_PRESETS = {normalize(row[0]): HubPreset(*row) for row in PRESETS}


def get(name: str) -> HubPreset | None:
    """The preset called ``name`` (normalised), or None."""
    return _PRESETS.get(normalize(str(name)))


def suggestions(name: str, limit: int = 3) -> list[str]:
    """Preset names close to ``name``: completions first, then by similarity."""
    import difflib

    key = normalize(name)
    completions = sorted((k for k in _PRESETS if key and k.startswith(key)), key=len)
    similar = difflib.get_close_matches(key, list(_PRESETS), n=limit, cutoff=0.75)
    return [_PRESETS[k].name for k in dict.fromkeys([*completions, *similar])][:limit]


def list_presets(pattern: str | None = None) -> list[HubPreset]:
    """All presets by name, optionally those matching an fnmatch ``pattern`` (case-insensitive)."""
    import fnmatch

    presets = sorted(_PRESETS.values(), key=lambda p: p.name)
    if pattern is None:
        return presets
    raw, key = pattern.lower(), normalize(pattern)
    return [p for p in presets
            if fnmatch.fnmatchcase(p.name, raw) or fnmatch.fnmatchcase(normalize(p.name), key)]
