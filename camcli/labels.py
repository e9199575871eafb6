"""Class labels: index <-> name (and WordNet id) lookups for classifier outputs.

Kept free of TensorFlow/Keras so that argument parsing, `--class` resolution and label files can
be checked before the (slow) model import. The ImageNet table ships as package data
(``data/imagenet_class_index.tsv``, see ``data/NOTICE.md``) so no network call is ever needed.
"""

from __future__ import annotations

import difflib
import functools
import json
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path

from camcli.errors import UnknownNameError, UsageError

__all__ = ["Labels", "generic_labels", "imagenet_labels", "load_label_file"]


def _normalize(name: str) -> str:
    """Fold case, treat spaces, underscores and dashes alike and drop apostrophes, so users can
    type names the way they read them ("golden retriever", "potters wheel") or the way Keras
    prints them ("golden_retriever", "potter's_wheel").
    """
    return " ".join(name.replace("_", " ").replace("-", " ").replace("'", "").casefold().split())


@dataclass(frozen=True)
class Labels:
    """The names (and, for ImageNet, WordNet ids) of a model's output classes, by index."""

    names: tuple[str, ...]
    wnids: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.wnids is not None and len(self.wnids) != len(self.names):
            raise ValueError(f"{len(self.names)} names but {len(self.wnids)} wnids")

    def __len__(self) -> int:
        return len(self.names)

    def name(self, i: int) -> str:
        return self.names[self._check_index(i)]

    def wnid(self, i: int) -> str | None:
        return None if self.wnids is None else self.wnids[self._check_index(i)]

    def resolve(self, spec: int | str) -> int:
        """Turn a user's class spec into an index.

        Accepts an int, a decimal string ("281"), a WordNet id ("n02123045") or a label name
        (case-insensitive; spaces, underscores and dashes alike; apostrophes ignored). Digits are
        always an index, since that is what a user typing "281" means. When a name matches
        several classes only after folding, an exact match wins; otherwise it is ambiguous.
        """
        if isinstance(spec, int) and not isinstance(spec, bool):
            return self._check_index(spec)
        text = str(spec).strip()
        if text.isascii() and text.isdigit():
            return self._check_index(int(text), spec=text)
        if text.lower() in self._by_wnid:
            return self._by_wnid[text.lower()]
        key = _normalize(text)
        matches = self._by_name.get(key, [])
        if len(matches) > 1:  # "Cardigan" (corgi, 264) vs "cardigan" (sweater, 474)
            matches = [i for i in matches if self.names[i] == text] or matches
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise UsageError(
                f"class name {text!r} is ambiguous: it matches "
                + ", ".join(self._describe(i) for i in matches)
                + "; give the index or WordNet id instead"
            )
        close = difflib.get_close_matches(key, list(self._by_name), n=3)
        raise UnknownNameError("class", text, [self.names[self._by_name[c][0]] for c in close])

    def _check_index(self, i: int, spec: str | None = None) -> int:
        if not 0 <= i < len(self.names):
            raise UnknownNameError("class", str(i) if spec is None else spec)
        return i

    def _describe(self, i: int) -> str:
        wnid = self.wnid(i)
        return f"{i} ({wnid})" if wnid else str(i)

    @cached_property
    def _by_name(self) -> dict[str, list[int]]:
        """Normalized name -> indices; a list because ImageNet repeats names ("crane")."""
        table: dict[str, list[int]] = {}
        for i, name in enumerate(self.names):
            table.setdefault(_normalize(name), []).append(i)
        return table

    @cached_property
    def _by_wnid(self) -> dict[str, int]:
        return {w.lower(): i for i, w in enumerate(self.wnids or ())}


@functools.lru_cache
def imagenet_labels() -> Labels:
    """The 1000 ImageNet-1k classes in Keras' index order, from the shipped TSV table."""
    text = resources.files("camcli").joinpath("data/imagenet_class_index.tsv").read_text("utf-8")
    rows = [line.split("\t") for line in text.splitlines()[1:] if line]
    if len(rows) != 1000 or any(int(r[0]) != i for i, r in enumerate(rows)):
        raise RuntimeError("camcli/data/imagenet_class_index.tsv is corrupt; reinstall camcli")
    return Labels(names=tuple(r[2] for r in rows), wnids=tuple(r[1] for r in rows))


def generic_labels(n: int) -> Labels:
    """Placeholder names for models that come without labels: class_0 ... class_{n-1}."""
    if n < 1:
        raise ValueError(f"a model needs at least one class, got {n}")
    return Labels(names=tuple(f"class_{i}" for i in range(n)))


def load_label_file(path: str | Path, expected: int | None = None) -> Labels:
    """Read labels from a file, so custom models can print real class names.

    Formats: plain text, one label per line (trailing blank lines ignored); a JSON list of names;
    a JSON object ``{"0": "cat", ...}`` or ``{"cat": 0, ...}``; or Keras'
    ``{"0": ["n01440764", "tench"], ...}`` index file. JSON is detected by a ``.json`` suffix or
    a leading ``[``/``{``. If ``expected`` is given, the count must equal the model's outputs.
    Any problem raises UsageError with a one-line reason naming the file.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(f"cannot read labels file {path}: {reason}") from None

    if path.suffix.lower() == ".json" or text.lstrip()[:1] in ("[", "{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(
                f"labels file {path} is not valid JSON: {exc.msg} (line {exc.lineno})"
            ) from None
        labels = _labels_from_json(data, path)
    else:
        labels = Labels(names=_labels_from_lines(text.splitlines(), path))

    if not labels.names:
        raise UsageError(f"labels file {path} has no labels")
    if expected is not None and len(labels) != expected:
        raise UsageError(
            f"labels file {path} has {len(labels)} labels but the model has {expected} outputs"
        )
    return labels


def _labels_from_lines(lines: list[str], path: Path) -> tuple[str, ...]:
    names = [line.strip() for line in lines]
    while names and not names[-1]:
        names.pop()
    for lineno, name in enumerate(names, start=1):
        if not name:
            raise UsageError(f"labels file {path}: line {lineno} is blank")
    return tuple(names)


def _labels_from_json(data: object, path: Path) -> Labels:
    def bad(reason: str) -> UsageError:
        return UsageError(f"labels file {path}: {reason}")

    if isinstance(data, list):
        if not all(isinstance(x, str) and x.strip() for x in data):
            raise bad("a JSON list must hold only non-empty strings")
        return Labels(names=tuple(x.strip() for x in data))
    if not isinstance(data, dict):
        raise bad("expected a JSON list or object")

    if all(isinstance(v, int) and not isinstance(v, bool) for v in data.values()):
        by_index = {v: k for k, v in data.items()}  # {"cat": 0}
        if len(by_index) != len(data):
            raise bad("two names map to the same index")
    elif all(isinstance(k, str) and k.isascii() and k.isdigit() for k in data):
        by_index = {int(k): v for k, v in data.items()}  # {"0": "cat"} or {"0": [wnid, name]}
    else:
        raise bad('expected {"0": "name", ...} or {"name": 0, ...}')

    if sorted(by_index) != list(range(len(by_index))):
        missing = sorted(set(range(len(by_index))) - set(by_index))
        raise bad(f"indices must run 0..{len(by_index) - 1} without gaps (missing {missing[0]})")
    values = [by_index[i] for i in range(len(by_index))]

    if all(isinstance(v, str) and v.strip() for v in values):
        return Labels(names=tuple(v.strip() for v in values))
    if all(
        isinstance(v, list) and len(v) == 2 and all(isinstance(s, str) for s in v) for v in values
    ):
        return Labels(names=tuple(v[1] for v in values), wnids=tuple(v[0] for v in values))
    raise bad("every label must be a non-empty string")
