"""Comparing an audit with an earlier one (``--baseline``): did the model change its mind or
its gaze?

A retrained model can keep its accuracy while looking somewhere else (a watermark, the
background). Each audit stores every image's map, so a later audit of the same manifest can
measure how far each map moved: Pearson correlation and IoU of the hottest 20 % of the two maps,
on a common grid. The numeric part is pure; :func:`load_baseline` is the only I/O.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from camcli.audit import metrics
from camcli.errors import UsageError
from camcli.heatmaps import resize

#: Maps are stored with this many decimals; comparisons use the stored values on both sides, so
#: an audit compared with itself has exactly zero drift.
MAP_DECIMALS = 4
AUDIT_SCHEMA = "camcli-audit"


def encode_map(cam: np.ndarray) -> dict:
    """A map as stored in ``audit.json`` (feature resolution, rounded)."""
    rounded = np.round(np.asarray(cam, dtype=np.float64), MAP_DECIMALS)
    return {"height": int(cam.shape[0]), "width": int(cam.shape[1]), "values": rounded.tolist()}


def decode_map(stored: dict) -> np.ndarray:
    values = np.asarray(stored["values"], dtype=np.float32)
    if values.shape != (stored["height"], stored["width"]):
        raise ValueError(f"map values {values.shape} do not match the stored size")
    return values


def map_similarity(current: np.ndarray, previous: np.ndarray) -> dict:
    """Correlation, top-20 % IoU and drift (``1 - IoU``) of two maps of the same image.

    Both maps cover the whole image (the model sees it stretched), so maps of different
    resolutions (another architecture or layer) are compared after resizing both to the finer
    grid.
    """
    height = max(current.shape[0], previous.shape[0])
    width = max(current.shape[1], previous.shape[1])
    a = resize(current, width, height)
    b = resize(previous, width, height)
    overlap = metrics.iou(metrics.top_region(a), metrics.top_region(b))
    return {
        "map_correlation": metrics.pearson(a, b),
        "map_iou_top20": overlap,
        "map_drift": 1.0 - overlap,
    }


def compare_image(
    current_map: np.ndarray,
    previous: dict,
    top1: int,
    probabilities: np.ndarray,
    sha256: str,
) -> dict:
    """One image's comparison with its baseline record (a dict from the earlier audit.json).

    The probability compared is that of the baseline's explained class (the expected class when
    the row has one, else the baseline's top-1), taken from this audit's full probability vector.
    """
    explained = previous["explained"]
    index = int(explained["index"])
    before = float(explained["probability"])
    after = float(probabilities[index])
    before_top1 = int(previous["predictions"][0]["index"])
    previous_map = decode_map(previous["map"])
    # Compare what is stored on both sides: the current map rounded as it will be written.
    rounded = decode_map(encode_map(current_map))
    return {
        "found": True,
        "same_image": previous["input"]["sha256"] == sha256,
        "class": index,
        "top1_before": before_top1,
        "top1_after": int(top1),
        "top1_changed": before_top1 != int(top1),
        "probability_before": before,
        "probability_after": after,
        "probability_change": after - before,
        **map_similarity(rounded, previous_map),
    }


def load_baseline(path: str | Path) -> dict:
    """Read an earlier ``audit.json``: ``{"record": ..., "images": {id: image record}}``."""
    path = Path(path)
    try:
        record = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise UsageError(f"--baseline {path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"--baseline {path}: not a readable audit.json ({exc})") from None
    if not isinstance(record, dict) or record.get("schema") != AUDIT_SCHEMA:
        raise UsageError(f"--baseline {path}: not a camcli audit.json (no schema "
                         f"{AUDIT_SCHEMA!r})")
    from camcli.audit.reports import AUDIT_SCHEMA_VERSION

    if record.get("schema_version") != AUDIT_SCHEMA_VERSION:
        raise UsageError(
            f"--baseline {path}: audit schema version {record.get('schema_version')!r}, this "
            f"camcli reads version {AUDIT_SCHEMA_VERSION}"
        )
    images = {
        image["id"]: image
        for image in record.get("images", [])
        if image.get("ok") and image.get("map") is not None
    }
    return {"path": str(path), "record": record, "images": images}


def check_precision(baseline: dict, precision: str, allow: bool = False) -> None:
    """Refuse a baseline whose maps were made at another ``--precision`` unless ``allow``.

    Reduced precision moves maps a little (README: Pearson r about 0.99), which a drift check
    would report as the model's doing. Baselines from before ``--precision`` were float32.
    """
    before = (baseline["record"].get("model") or {}).get("precision", "float32")
    if before != precision and not allow:
        raise UsageError(
            f"--baseline {baseline['path']}: its maps were made at --precision {before}, this "
            f"audit runs at {precision}; pass --allow-precision-change to compare them anyway"
        )
