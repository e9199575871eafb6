"""Running an audit: manifest in, metrics per image, checks, reports out.

The steps, per batch of manifest rows:

1. decode each image at the model's input size (the whole image stretched, as ``explain`` does)
   and rasterise its boxes or mask onto the same grid;
2. one :meth:`Explainer.explain_arrays` call gives the logits and the top-1 maps; images whose
   expected class is not their top-1 get that class's map from a second engine on the same
   model (the audit asks where the model looks *for the expected class*);
3. localisation metrics on the maps, faithfulness by re-scoring perturbed images through
   :meth:`Explainer.predict` (all of the batch's perturbations in large chunks);
4. overlays (ground truth drawn on top) into ``OUT/overlays/``, never beside the inputs.

Then the baseline comparison, the checks, aggregates, and the four reports.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from camcli import images
from camcli.audit import checks as checks_module
from camcli.audit import compare, drawing, faithfulness, htmlreport, metrics, reports
from camcli.audit.manifest import Manifest, ManifestError, ManifestRow, load_manifest
from camcli.errors import ExitStatus, InputError, UsageError
from camcli.heatmaps import map_stats, resize
from camcli.outputs import atomic_write
from camcli.pipeline import describe_input, provenance, rank_predictions
from camcli.render import encode

REPORT_FILES = ("audit.json", "junit.xml", "summary.md", "report.html")
OVERLAY_DIR = "overlays"
DEFAULT_OUT = Path("camcli-audit")


@dataclass(frozen=True)
class AuditSettings:
    """Everything about an audit except the model: outputs, protocol and thresholds."""

    out_dir: Path = DEFAULT_OUT
    thresholds: dict[str, float | None] = field(default_factory=dict)
    mean_thresholds: dict[str, float] = field(default_factory=dict)  # on the manifest's mean
    baseline: Path | None = None
    allow_precision_change: bool = False  # compare with a baseline made at another precision
    top_k: int = 5
    steps: int = 20
    blur_sigma: float | None = None  # model-input pixels; None: 10 px at 224, scaled
    pointing_tolerance: float | None = None  # model-input pixels; None: 15 px at 224, scaled
    score_batch: int = 64
    colormap: str = "jet"
    alpha: float = 0.4
    max_overlay_side: int | None = 640
    max_pixels: int | None = images.DEFAULT_MAX_PIXELS
    step_summary: bool = True  # append summary.md to $GITHUB_STEP_SUMMARY when set

    def validate(self) -> None:
        unknown = (set(self.thresholds) | set(self.mean_thresholds)) - set(checks_module.BY_NAME)
        if unknown:
            raise UsageError(f"unknown threshold {sorted(unknown)[0]!r}")
        for name, number, low in (("--steps", self.steps, 1), ("--top-k", self.top_k, 1),
                                  ("--score-batch", self.score_batch, 1)):
            if number < low:
                raise UsageError(f"{name} must be at least {low}, not {number}")
        for name, value in (("--blur-sigma", self.blur_sigma),
                            ("--pointing-tolerance", self.pointing_tolerance)):
            if value is not None and value < 0:
                raise UsageError(f"{name} must not be negative, not {value}")
        if self.baseline is not None and not Path(self.baseline).is_file():
            raise UsageError(f"--baseline {self.baseline}: no such file")
        if not 0.0 <= self.alpha <= 1.0:
            raise UsageError(f"--alpha must be between 0 and 1, not {self.alpha}")
        from camcli.render import colormap

        colormap(self.colormap)


@dataclass
class AuditResult:
    record: dict
    files: dict[str, Path]

    @property
    def passed(self) -> bool:
        return bool(self.record["summary"]["passed"])

    @property
    def exit_status(self) -> ExitStatus:
        return ExitStatus.OK if self.passed else ExitStatus.SOME_FAILED


@dataclass
class _Item:
    """One manifest row on its way through a batch."""

    index: int  # position in the manifest
    row: ManifestRow
    expected: int | None
    decoded: images.DecodedImage | None = None
    region: np.ndarray | None = None  # (h, w) bool at the model's input size
    boxes: tuple = ()  # clipped to the image
    mask: Image.Image | None = None
    error: str | None = None


def run_audit(
    manifest: Manifest | str | Path,
    explainer,
    settings: AuditSettings = AuditSettings(),
    progress: Callable[[int], object] | None = None,
) -> AuditResult:
    """Audit ``explainer``'s model on every row of ``manifest``; write the reports.

    Raises :class:`~camcli.errors.UsageError` (a bad manifest row, an unknown expected class, an
    unusable baseline or setting) before any image is processed. Unreadable images do not stop
    the audit: they become failed images.
    """
    started = time.perf_counter()
    created = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    settings.validate()
    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest)
    loaded = explainer.loaded
    expected = [_resolve(manifest, row, loaded.labels) for row in manifest.rows]
    baseline = compare.load_baseline(settings.baseline) if settings.baseline else None
    if baseline is not None:
        compare.check_precision(baseline, loaded.precision, settings.allow_precision_change)
    out_dir = Path(settings.out_dir)
    _refuse_clobbering(out_dir, manifest)

    height, width = loaded.input_size
    protocol = faithfulness.Protocol(
        steps=settings.steps,
        blur_sigma=settings.blur_sigma if settings.blur_sigma is not None
        else metrics.scaled_to_input(metrics.BLUR_SIGMA_AT_224, (height, width)),
        score=loaded.probability,
    )
    tolerance = (settings.pointing_tolerance if settings.pointing_tolerance is not None
                 else metrics.scaled_to_input(metrics.POINTING_TOLERANCE_AT_224, (height, width)))
    context = _Context(explainer, settings, protocol, tolerance, baseline, out_dir)

    records: list[dict] = []
    thumbnails: dict[str, tuple[str, str]] = {}
    items = [_Item(i, row, expected[i]) for i, row in enumerate(manifest.rows)]
    workers = max(2, min(8, os.cpu_count() or 2))
    with ThreadPoolExecutor(workers, thread_name_prefix="camcli-audit") as pool:
        for start in range(0, len(items), explainer.batch_size):
            batch = items[start : start + explainer.batch_size]
            list(pool.map(lambda item: _decode(item, loaded, settings.max_pixels), batch))
            for record, thumbs in context.audit_batch(batch, pool):
                records.append(record)
                if thumbs:
                    thumbnails[record["id"]] = thumbs
                if progress is not None:
                    progress(1)
            for item in batch:  # memory stays bounded by the batch, not the manifest
                item.decoded = item.mask = item.region = None

    record = _audit_record(context, manifest, records, created)
    record["seconds"] = round(time.perf_counter() - started, 3)
    files = _write_reports(record, thumbnails, out_dir, settings.step_summary)
    return AuditResult(record=record, files=files)


def _resolve(manifest: Manifest, row: ManifestRow, labels) -> int | None:
    if row.expected is None:
        return None
    try:
        return labels.resolve(row.expected)
    except UsageError as exc:
        raise ManifestError(manifest.path, row.line, f"expected: {exc}") from None


def _refuse_clobbering(out_dir: Path, manifest: Manifest) -> None:
    for name in REPORT_FILES:
        target = out_dir / name
        if target.exists() and target.resolve() == manifest.path.resolve():
            raise UsageError(f"--out {out_dir}: {name} would overwrite the manifest")


# --------------------------------------------------------------------------- decoding


def _decode(item: _Item, loaded, max_pixels) -> None:
    """Decode the image at the model's input size and put its boxes/mask on the same grid."""
    row = item.row
    grid = tuple(loaded.input_size)
    try:
        item.decoded = images.read_for_model(row.path, grid, loaded.channels, max_pixels,
                                             resample=loaded.resample)
        size = item.decoded.size
        if row.boxes:
            kept, outside = metrics.clip_boxes(row.boxes, size)
            if outside:
                box = ",".join(f"{v:g}" for v in outside[0])
                raise InputError(row.path, f"manifest line {row.line}: bbox {box} lies outside "
                                           f"the {size[0]}×{size[1]} image")
            item.boxes = tuple(kept)
            item.region = metrics.region_from_boxes(kept, size, grid)
        elif row.mask is not None:
            item.mask, item.region = _read_mask(row, grid, max_pixels)
    except InputError as exc:
        item.error = exc.reason
    except Exception as exc:  # a decoder bug on one odd file must not stop the audit
        item.error = f"cannot decode image: {exc!r}"


def _read_mask(row: ManifestRow, grid: tuple[int, int], max_pixels):
    """The mask as a binary image and as a region on the model's grid.

    Object pixels: non-zero in a 0/1 mask, at least 128 in a 0-255 one (so JPEG noise around
    zero is not object).
    """
    try:
        data = images.read_bytes(row.mask)
        opened = images.open_image(row.mask, data, max_pixels)
        grey = np.asarray(images.to_mode(ImageOps.exif_transpose(opened), 1))
    except InputError as exc:
        raise InputError(row.path, f"mask {row.mask}: {exc.reason}") from None
    binary = grey > (0 if grey.max() <= 1 else 127)
    if not binary.any():
        raise InputError(row.path, f"mask {row.mask} marks no object pixel")
    mask = Image.fromarray(binary.astype(np.uint8) * 255, mode="L")
    region = np.asarray(mask.resize((grid[1], grid[0]), Image.Resampling.NEAREST)) > 0
    if not region.any():  # an object thinner than one input pixel: keep its densest cell
        coarse = np.asarray(mask.resize((grid[1], grid[0]), Image.Resampling.BOX))
        region = coarse == coarse.max()
    return mask, region


# --------------------------------------------------------------------------- one batch


class _Context:
    """The per-audit state the batches share: model, protocol, baseline, engines."""

    def __init__(self, explainer, settings, protocol, tolerance, baseline, out_dir):
        self.explainer = explainer
        self.loaded = explainer.loaded
        self.settings = settings
        self.protocol = protocol
        self.tolerance = tolerance
        self.baseline = baseline
        self.out_dir = out_dir
        self.top_k = min(settings.top_k, len(self.loaded.labels))

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        return np.stack([self.loaded.probabilities(row) for row in np.asarray(scores)])

    def score(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities of perturbed images, through the model's own preprocessing."""
        chunk = self.settings.score_batch
        return self.probabilities(self.explainer.predict(pixels, chunk=chunk))

    def class_maps(self, pixels: np.ndarray, classes: tuple[int, ...]):
        """Maps of ``classes`` for ``pixels``, from the explainer's engine for those classes."""
        return self.explainer.explain_arrays(pixels, classes=classes)

    def audit_batch(self, batch: list[_Item], pool):
        good = [item for item in batch if item.error is None]
        results: dict[int, tuple[dict, tuple[str, str] | None]] = {}
        for item in batch:
            if item.error is not None:
                results[item.index] = (_failed_record(item), None)
        if good:
            for item, record, thumbs in self._measure(good, pool):
                results[item.index] = (record, thumbs)
        for item in batch:
            yield results[item.index]

    def _measure(self, good: list[_Item], pool):
        loaded = self.loaded
        height, width = loaded.input_size
        pixels = np.stack([item.decoded.pixels for item in good])
        out = self.explainer.explain_arrays(pixels)
        logits = out.logits.astype(np.float64)
        probabilities = self.probabilities(logits)
        top1 = np.argmax(logits, axis=1)
        cams = out.cams[:, 0].copy()
        empty = out.empty[:, 0].copy()
        explained = np.array([item.expected if item.expected is not None else int(t)
                              for item, t in zip(good, top1, strict=True)])
        redo = [i for i, item in enumerate(good)
                if item.expected is not None and item.expected != int(out.targets[i, 0])]
        if redo:
            classes = tuple(sorted({int(explained[i]) for i in redo}))
            extra = self.class_maps(pixels[redo], classes)
            for j, i in enumerate(redo):
                column = classes.index(int(explained[i]))
                cams[i], empty[i] = extra.cams[j, column], extra.empty[j, column]
        fine = np.stack([resize(cam, width, height) for cam in cams])
        faith = faithfulness.measure(self.score, pixels, fine, explained, self.protocol,
                                     chunk=self.settings.score_batch)
        drop, increase = faith.average_drop, faith.increase_in_confidence
        deletion_auc, insertion_auc = faith.deletion_auc, faith.insertion_auc

        def finish(i: int):
            item = good[i]
            order = np.argsort(-logits[i], kind="stable")
            m: dict[str, float | int | None] = dict.fromkeys(
                ("top1", "topk", "expected_probability", "pointing", "energy_in_box"))
            if item.expected is not None:
                m["top1"] = int(order[0] == item.expected)
                m["topk"] = int(item.expected in order[: self.top_k])
                m["expected_probability"] = float(probabilities[i, item.expected])
            if item.region is not None:
                m["pointing"] = int(metrics.pointing_hit(fine[i], item.region, self.tolerance))
                m["energy_in_box"] = metrics.energy_in_region(fine[i], item.region)
            m["average_drop"] = float(drop[i])
            m["increase_in_confidence"] = float(increase[i])
            m["deletion_auc"] = float(deletion_auc[i])
            m["insertion_auc"] = float(insertion_auc[i])
            comparison = None
            if self.baseline is not None:
                comparison = self._compare(item, cams[i], int(order[0]), probabilities[i])
                found = comparison["found"]
                m["top1_changed"] = int(comparison["top1_changed"]) if found else None
                m["probability_drop"] = (-comparison["probability_change"] if found else None)
                for name in ("map_correlation", "map_iou_top20", "map_drift"):
                    m[name] = comparison[name] if found else None
            record = self._record(item, logits[i], probabilities[i], int(explained[i]),
                                  bool(empty[i]), cams[i], m, comparison,
                                  faith.deletion[i], faith.insertion[i])
            thumbs = self._draw(item, cams[i], record)
            return item, record, thumbs

        yield from pool.map(finish, range(len(good)))

    def _compare(self, item: _Item, cam, top1: int, probabilities) -> dict:
        previous = self.baseline["images"].get(item.row.id)
        if previous is None:
            return {"found": False}
        return compare.compare_image(cam, previous, top1, probabilities,
                                     _sha256(item.decoded.data))

    def _record(self, item, logits, probabilities, explained, empty, cam, m,
                comparison, deletion, insertion) -> dict:
        labels = self.loaded.labels
        decoded = item.decoded
        width, height = decoded.size
        limits = checks_module.effective_thresholds(self.settings.thresholds, item.row.thresholds)
        checks = [c.to_json() for c in checks_module.evaluate(m, limits)]
        return {
            "id": item.row.id,
            "path": item.row.spec_path,
            "line": item.row.line,
            "note": item.row.note,
            "ok": True,
            "input": describe_input(item.row.path, decoded.size, decoded.data),
            "expected": None if item.expected is None else {
                "spec": str(item.row.expected), **_class(labels, item.expected)},
            "explained": {
                **_class(labels, explained),
                "reason": "expected" if item.expected is not None else "top-1",
                "score": float(logits[explained]),
                "probability": float(probabilities[explained]),
                "empty": empty,
            },
            "predictions": rank_predictions(labels, logits, probabilities, self.top_k),
            "region": {
                "boxes": [list(b) for b in item.boxes],
                "mask": None if item.row.mask is None else str(item.row.mask),
                "share_of_image": round(float(item.region.mean()), 6),
            } if item.region is not None else None,
            "metrics": m,
            "curves": {"deletion": [round(float(v), 6) for v in deletion],
                       "insertion": [round(float(v), 6) for v in insertion]},
            "map": compare.encode_map(cam),
            **map_stats(cam, width, height).to_json(),
            "baseline": comparison,
            "checks": checks,
            "passed": all(c["status"] != "fail" for c in checks),
            "overlay": None,
        }

    def _draw(self, item: _Item, cam: np.ndarray, record: dict) -> tuple[str, str]:
        """Write the overlay under OUT/overlays/ and return the two inline thumbnails."""
        settings = self.settings
        full = images.read_full(item.decoded.data, settings.max_overlay_side)
        size = item.decoded.size
        picture = drawing.draw_regions(full, size, item.boxes, item.mask)
        overlay = drawing.audit_overlay(full, cam, size, item.boxes, item.mask,
                                        settings.colormap, settings.alpha)
        name = _overlay_name(item.index, item.row.spec_path)
        atomic_write(self.out_dir / OVERLAY_DIR / name, encode(overlay, "png"),
                     protect=item.row.path)
        record["overlay"] = f"{OVERLAY_DIR}/{name}"
        return drawing.thumbnail_uri(picture), drawing.thumbnail_uri(overlay)


def _class(labels, index: int) -> dict:
    return {"index": int(index), "label": labels.name(int(index)), "wnid": labels.wnid(int(index))}


def _sha256(data: bytes) -> str:
    from camcli.outputs import sha256

    return sha256(data)


def _overlay_name(index: int, spec_path: str) -> str:
    """``0007_cat.jpg.cam.png``: unique per row, and a camcli output name (so a later audit
    into the same folder may replace it, and ``camcli explain`` never takes it as an input)."""
    name = re.sub(r"[^\w.-]+", "_", Path(spec_path).name, flags=re.ASCII).strip("._") or "image"
    if not re.search(r"\.[A-Za-z0-9]{1,5}$", name):
        name += ".img"
    return f"{index + 1:04d}_{name[-80:]}.cam.png"


def _failed_record(item: _Item) -> dict:
    message = f"cannot audit this image: {item.error}"
    return {
        "id": item.row.id,
        "path": item.row.spec_path,
        "line": item.row.line,
        "note": item.row.note,
        "ok": False,
        "error": item.error,
        "checks": [{"name": "load", "metric": None, "op": None, "threshold": None,
                    "value": None, "status": "error", "source": "manifest",
                    "message": message}],
        "passed": False,
    }


# --------------------------------------------------------------------------- the whole audit


def _audit_record(context: _Context, manifest: Manifest, records: list[dict], created: str):
    explainer, settings = context.explainer, context.settings
    aggregates = reports.aggregate(records)
    mean_checks = [c.to_json() for c in
                   checks_module.evaluate_means(aggregates, settings.mean_thresholds)]
    baseline = None
    if context.baseline is not None:
        previous = context.baseline["record"]
        ids = {r["id"] for r in records}
        baseline = {
            "path": context.baseline["path"],
            "model": previous.get("model"),
            "created": previous.get("created"),
            "same_manifest": previous.get("manifest", {}).get("sha256") == manifest.sha256,
            "matched": sum(1 for r in records if (r.get("baseline") or {}).get("found")),
            "missing": sorted(ids - set(context.baseline["images"])),
        }
    return {
        "schema": compare.AUDIT_SCHEMA,
        "schema_version": reports.AUDIT_SCHEMA_VERSION,
        **provenance(explainer),
        "created": created,
        "manifest": {"path": str(manifest.path), "format": manifest.format,
                     "sha256": manifest.sha256, "rows": len(manifest.rows)},
        "settings": {
            "thresholds": {k: v for k, v in settings.thresholds.items() if v is not None},
            "mean_thresholds": dict(settings.mean_thresholds),
            "top_k": context.top_k,
            "steps": settings.steps,
            "blur_sigma_px": round(context.protocol.blur_sigma, 4),
            "pointing_tolerance_px": round(context.tolerance, 4),
            "batch_size": explainer.batch_size,
            "score_batch": settings.score_batch,
            "colormap": settings.colormap,
            "alpha": settings.alpha,
            "max_overlay_side": settings.max_overlay_side,
        },
        "protocol": _protocol(context),
        "baseline": baseline,
        "images": records,
        "aggregates": aggregates,
        "mean_checks": mean_checks,
        "summary": reports.summarize(records, mean_checks),
    }


def _protocol(context: _Context) -> dict:
    height, width = context.loaded.input_size
    return {
        "input": f"the whole image resized bilinearly to {height}×{width} (no crop), as "
        "camcli explain; boxes and masks are mapped onto the same grid",
        "explained_class": "the row's expected class; its top-1 prediction when it has none",
        "localisation": {
            "grid": f"model input, {height}×{width}; map resized bilinearly",
            "region": "input cells whose centres fall inside a box, or the mask resized "
            "(nearest)",
            "pointing": "1 when the map's peak is within tolerance_px of the region "
            "(Zhang et al. 2016: 15 px at 224, scaled); 0 for an empty map",
            "tolerance_px": round(context.tolerance, 4),
            "energy_in_box": "sum of the map inside the region / sum of the map "
            "(energy-based pointing game, Score-CAM)",
        },
        "faithfulness": context.protocol.to_json(),
        "map_comparison": {
            "grid": "the finer of the two stored maps, bilinear",
            "correlation": "Pearson",
            "top_fraction": metrics.TOP_FRACTION,
            "drift": "1 - IoU of the two maps' top-20 % cells",
            "stored_decimals": compare.MAP_DECIMALS,
            "probability_drop": "baseline minus current probability of the baseline's "
            "explained class",
        },
        "aggregates": f"mean over the images that have the metric; 95 % percentile bootstrap "
        f"interval, {reports.BOOTSTRAP_SAMPLES} resamples, seed {reports.BOOTSTRAP_SEED}",
    }


def _write_reports(record: dict, thumbnails, out_dir: Path, step_summary: bool):
    markdown = reports.summary_markdown(record)
    files = {
        "audit.json": reports.audit_json(record),
        "junit.xml": reports.junit_xml(record),
        "summary.md": markdown.encode("utf-8"),
        "report.html": htmlreport.report_html(record, thumbnails),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = out_dir / name
        reports.write_report(paths[name], data)
    if step_summary:
        target = reports.append_step_summary(markdown)
        if target is not None:
            paths["step_summary"] = target
    return paths
