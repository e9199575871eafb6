"""The pure part of the run report: records in, the page's data out (plain dicts, no I/O).

A *card* is the few fields the page shows for one input, taken from its record by
:func:`summarise`; :func:`page_data` adds the counts and the charts' bins. Everything here is
deterministic: the same records give the same data whatever order they were found in.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterable

#: Top-1 probability below which an input counts as "low confidence" (the page can change it).
LOW_CONFIDENCE = 0.5
#: Classes in the bar chart; the rest are summed as "other classes".
CHART_CLASSES = 12
PROBABILITY_BINS = (0.0, 1.0, 20)
#: ``top20_energy_share`` is 0.2 for a uniform map and 1 for a map whose energy is all in its
#: hottest 20 %, so the histogram spans [0.2, 1]. Empty maps (no share) are counted apart.
SHARPNESS_BINS = (0.2, 1.0, 16)


class RecordError(ValueError):
    """A JSON file that is not a camcli record the report can read."""


def card_id(name: str) -> str:
    """A short stable id for an input (its thumbnails' file names)."""
    return hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _number(value, where: str, *, optional: bool = False) -> float | None:
    """``value`` rounded for the page; a number in [0, 1] (``None`` too when ``optional``),
    else :class:`RecordError` naming the field (a NaN in a record is a bad record)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise RecordError(f"{where} is {json.dumps(value)[:40]}, not a number in [0, 1]")
    return round(float(value), 4)


def _text(value, where: str, *, empty: bool = True) -> str:
    if not isinstance(value, str) or not (value or empty):
        raise RecordError(f"{where} is {json.dumps(value)[:40]}, not a text")
    return value


def summarise(record: dict) -> dict:
    """The card of one record: name, top-k (``[label, probability]`` pairs), explained classes
    with sharpness and empty flag.

    ``share`` and ``empty`` describe the first explained class (the overlay the card shows);
    ``empty`` is true when any explained map is empty. Raises :class:`RecordError` when the
    record lacks what a camcli record has, or holds a number that is not one (NaN, infinite,
    out of range): its reason names the field.
    """
    try:
        name = _text(record["input"]["path"], "input.path", empty=False)
        predictions = [[_text(p["label"], f"predictions[{i}].label"),
                        _number(p["probability"], f"predictions[{i}].probability")]
                       for i, p in enumerate(record["predictions"])]
        explained = [_explained(i, e) for i, e in enumerate(record["explanations"])]
    except (KeyError, TypeError, AttributeError) as exc:
        raise RecordError(f"not a camcli record ({type(exc).__name__}: {exc})") from None
    if not predictions:
        raise RecordError("not a camcli record (no predictions)")
    label, probability = predictions[0]
    first = explained[0] if explained else {"share": None, "empty": False}
    return {
        "id": card_id(name),
        "name": name,
        "label": label,
        "prob": probability,
        "share": first["share"],
        "empty": any(e["empty"] for e in explained),
        "top": predictions,
        "explained": explained,
    }


def _explained(i: int, entry: dict) -> dict:
    where = f"explanations[{i}]"
    empty = bool(entry.get("empty"))
    share = entry.get("top20_energy_share")
    return {
        "label": _text(entry["label"], f"{where}.label"),
        "prob": _number(entry.get("probability"), f"{where}.probability", optional=True),
        "share": None if empty else _number(share, f"{where}.top20_energy_share",
                                            optional=True),
        "empty": empty,
        "overlay": entry.get("overlay"),
    }


def histogram(values: Iterable[float], low: float, high: float, bins: int) -> dict:
    """Counts of ``values`` in ``bins`` equal bins over [low, high] (the last bin includes
    ``high``; values outside are counted in the first or last bin)."""
    counts = [0] * bins
    width = (high - low) / bins
    for value in values:
        if value is None or math.isnan(value):
            continue
        index = math.floor((value - low) / width)
        counts[min(bins - 1, max(0, index))] += 1
    edges = [round(low + i * width, 6) for i in range(bins + 1)]
    return {"edges": edges, "counts": counts}


def class_counts(labels: Iterable[str], keep: int = CHART_CLASSES) -> list[dict]:
    """The ``keep`` most frequent labels (ties by name), then one "other classes" bar."""
    counter = Counter(labels)
    ordered = sorted(counter.items(), key=lambda item: (-item[1], item[0]))
    bars = [{"label": label, "count": count} for label, count in ordered[:keep]]
    rest = sum(count for _, count in ordered[keep:])
    if rest:
        bars.append({"label": f"{len(ordered) - keep} other classes", "count": rest,
                     "other": True})
    return bars


def page_data(cards: list[dict], failures: list[dict], title: str, created: str,
              low_confidence: float = LOW_CONFIDENCE) -> dict:
    """Everything the page shows: counts, chart bins, the cards (sorted by name) and failures."""
    cards = sorted(cards, key=lambda card: card["name"])
    failures = sorted(failures, key=lambda failure: failure["name"])
    labels = Counter(card["label"] for card in cards)
    return {
        "title": title,
        "created": created,
        "low_confidence": low_confidence,
        "counts": {
            "done": len(cards),
            "failed": len(failures),
            "empty": sum(card["empty"] for card in cards),
            "low_confidence": sum(card["prob"] < low_confidence for card in cards),
        },
        "charts": {
            "classes": class_counts(card["label"] for card in cards),
            "probability": histogram((c["prob"] for c in cards), *PROBABILITY_BINS),
            "sharpness": histogram((c["share"] for c in cards), *SHARPNESS_BINS),
        },
        "classes": sorted(labels, key=lambda label: (-labels[label], label)),
        **compact(cards),
        "failures": failures,
    }


def compact(cards: list[dict]) -> dict:
    """``{"labels": [...], "dirs": [...], "cards": [...]}``: the cards with every class label
    and link folder replaced by its index in one table, so 10,000 cards stay a small page.

    Cards that carry links (from the report builder) have ``dir`` (the record's folder) and
    ``input`` (``(folder, file)`` or ``None``); both become indices into ``dirs``.
    """
    labels: dict[str, int] = {}
    dirs: dict[str, int] = {}

    def label(text: str) -> int:
        return labels.setdefault(text, len(labels))

    def folder(text: str) -> int:
        return dirs.setdefault(text, len(dirs))

    out = []
    for card in cards:
        small = {**card, "label": label(card["label"]),
                 "top": [[label(name), p] for name, p in card["top"]],
                 "explained": [{**e, "label": label(e["label"])} for e in card["explained"]]}
        if "dir" in card:
            small["dir"] = folder(card["dir"])
        if card.get("input"):
            small["input"] = [folder(card["input"][0]), card["input"][1]]
        out.append(small)
    return {"labels": list(labels), "dirs": list(dirs), "cards": out}
