"""Thresholds turn metrics into pass/fail checks.

One table (:data:`THRESHOLDS`) names every threshold once: the CLI option (``--min-top1``), the
manifest column (``min_top1``), the metric it reads and the direction. A threshold given on the
command line applies to every image; a manifest row may override it for its image or switch it
``off``. A check whose metric does not exist for an image (no ``expected`` class, no box, no
baseline entry) is *skipped*, never silently passed.

The same thresholds can also apply to the manifest's *mean* (``--mean min_energy_in_box=0.3``):
one image with an odd map then does not fail the build, a model that looks elsewhere on most
images does. Top-1 accuracy is ``--mean min_top1=0.9``.
"""

from __future__ import annotations

from dataclasses import dataclass

OFF = "off"


@dataclass(frozen=True)
class Threshold:
    """One threshold: ``metric`` must be ``>=`` (min) or ``<=`` (max) the given value."""

    name: str  # manifest column and JSON name, e.g. "min_energy_in_box"
    metric: str  # the per-image metric it reads
    help: str
    needs: str  # what the metric needs when missing: shown in the skip message

    @property
    def minimum(self) -> bool:
        return self.name.startswith("min_")

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    def passes(self, value: float, limit: float) -> bool:
        return value >= limit if self.minimum else value <= limit


THRESHOLDS: tuple[Threshold, ...] = (
    Threshold("min_top1", "top1", "top-1 prediction is the expected class (1) or not (0)",
              "an expected class"),
    Threshold("min_topk", "topk", "expected class among the top-k predictions (1) or not (0)",
              "an expected class"),
    Threshold("min_expected_probability", "expected_probability",
              "probability of the expected class", "an expected class"),
    Threshold("min_pointing", "pointing", "heatmap peak on the box/mask (1) or not (0)",
              "a bbox or mask"),
    Threshold("min_energy_in_box", "energy_in_box",
              "share of the heatmap's energy inside the boxes/mask (0-1)", "a bbox or mask"),
    Threshold("max_average_drop", "average_drop",
              "confidence drop on image × map, percent (Grad-CAM++)", "a score"),
    Threshold("min_increase_in_confidence", "increase_in_confidence",
              "100 when image × map scores higher than the image, else 0", "a score"),
    Threshold("max_deletion_auc", "deletion_auc",
              "area under the deletion curve (lower: more faithful)", "a score"),
    Threshold("min_insertion_auc", "insertion_auc",
              "area under the insertion curve (higher: more faithful)", "a score"),
    Threshold("max_map_drift", "map_drift",
              "1 - IoU of the top-20 % regions of this map and the baseline's",
              "a --baseline entry for this image"),
    Threshold("max_probability_drop", "probability_drop",
              "fall of the expected (or explained) class probability since the baseline",
              "a --baseline entry for this image"),
)
BY_NAME = {t.name: t for t in THRESHOLDS}


@dataclass(frozen=True)
class Check:
    """The outcome of one threshold on one image."""

    name: str
    metric: str
    op: str  # ">=" or "<="
    threshold: float
    value: float | None
    status: str  # "pass", "fail" or "skip"
    source: str  # "global" (command line) or "row" (the manifest)
    message: str

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "metric": self.metric,
            "op": self.op,
            "threshold": self.threshold,
            "value": self.value,
            "status": self.status,
            "source": self.source,
            "message": self.message,
        }


def effective_thresholds(
    global_limits: dict[str, float | None], row_limits: dict[str, float | str]
) -> dict[str, tuple[float, str]]:
    """Merge command-line and per-row thresholds: ``{name: (limit, source)}``, in table order.

    A row value overrides the global one; ``off`` in a row removes the check for that image.
    """
    merged: dict[str, tuple[float, str]] = {}
    for spec in THRESHOLDS:
        if spec.name in row_limits:
            value = row_limits[spec.name]
            if value != OFF:
                merged[spec.name] = (float(value), "row")
        elif global_limits.get(spec.name) is not None:
            merged[spec.name] = (float(global_limits[spec.name]), "global")
    return merged


def evaluate(metrics: dict[str, float | None], limits: dict[str, tuple[float, str]]) -> list[Check]:
    """Compare one image's metrics with its thresholds; one :class:`Check` per threshold."""
    checks = []
    for name, (limit, source) in limits.items():
        spec = BY_NAME[name]
        op = ">=" if spec.minimum else "<="
        value = metrics.get(spec.metric)
        if value is None:
            status = "skip"
            message = f"{spec.metric} not measured: needs {spec.needs}"
        else:
            status = "pass" if spec.passes(value, limit) else "fail"
            verdict = "ok" if status == "pass" else "FAILED"
            message = f"{spec.metric} = {_fmt(value)}, required {op} {_fmt(limit)}: {verdict}"
        checks.append(Check(name, spec.metric, op, limit, value, status, source, message))
    return checks


def parse_mean_check(text: str) -> tuple[str, float]:
    """``"min_energy_in_box=0.3"`` (dashes allowed) -> ``("min_energy_in_box", 0.3)``."""
    from camcli.errors import UnknownNameError, UsageError

    name, sep, value = text.partition("=")
    name = name.strip().lstrip("-").replace("-", "_")
    if not sep:
        raise UsageError(f"--mean {text!r}: expected NAME=VALUE, e.g. min_energy_in_box=0.3")
    if name not in BY_NAME:
        import difflib

        raise UnknownNameError("threshold", name, difflib.get_close_matches(name, BY_NAME, n=3))
    try:
        number = float(value)
    except ValueError:
        raise UsageError(f"--mean {text!r}: {value!r} is not a number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise UsageError(f"--mean {text!r}: the threshold must be a finite number")
    return name, number


def evaluate_means(aggregates: dict, limits: dict[str, float]) -> list[Check]:
    """Compare the manifest's mean of each metric with its ``--mean`` threshold."""
    checks = []
    for spec in THRESHOLDS:
        if spec.name not in limits:
            continue
        limit = limits[spec.name]
        op = ">=" if spec.minimum else "<="
        aggregate = aggregates.get(spec.metric)
        if aggregate is None:
            value, status = None, "skip"
            message = f"mean {spec.metric} not measured: no image has {spec.needs}"
        else:
            value = aggregate["mean"]
            status = "pass" if spec.passes(value, limit) else "fail"
            verdict = "ok" if status == "pass" else "FAILED"
            low, high = aggregate["ci95"]
            message = (f"mean {spec.metric} = {_fmt(value)} over {aggregate['n']} images "
                       f"(95 % CI {_fmt(low)}-{_fmt(high)}), required {op} {_fmt(limit)}: "
                       f"{verdict}")
        checks.append(Check(spec.name, spec.metric, op, limit, value, status, "mean", message))
    return checks


def _fmt(value: float) -> str:
    return f"{value:.4g}"
