"""``camcli audit`` without a model: the pure metrics on hand-made arrays, the manifest parser,
thresholds, baseline comparison and the report formats built from a hand-made audit record.

Nothing here imports TensorFlow; the trained-model tests are in test_audit.py.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from camcli.audit import checks, compare, faithfulness, htmlreport, metrics, reports
from camcli.audit.manifest import ManifestError, load_manifest, parse_csv, parse_jsonl
from camcli.heatmaps import resize

# =========================================================================== metrics


def test_region_from_boxes_uses_cell_centres_in_the_stretched_frame():
    # A 200×100 image stretched onto a 4×4 grid: cells are 50 px wide and 25 px high.
    region = metrics.region_from_boxes([(0, 0, 100, 50)], (200, 100), (4, 4))
    expected = np.zeros((4, 4), bool)
    expected[:2, :2] = True
    np.testing.assert_array_equal(region, expected)
    # Union of two boxes; a box holding no cell centre still marks the cell under it.
    region = metrics.region_from_boxes([(150, 75, 200, 100), (60, 30, 62, 32)], (200, 100), (4, 4))
    assert region[3, 3] and region[1, 1] and region.sum() == 2


def test_clip_boxes_keeps_partial_boxes_and_reports_outside_ones():
    kept, outside = metrics.clip_boxes([(-5, -5, 10, 10), (120, 0, 130, 5)], (100, 50))
    assert kept == [(0.0, 0.0, 10.0, 10.0)]
    assert outside == [(120, 0, 130, 5)]


def test_pointing_hit_with_and_without_tolerance():
    cam = np.zeros((10, 10), np.float32)
    cam[2, 2] = 1.0
    region = np.zeros((10, 10), bool)
    region[5:8, 5:8] = True
    assert not metrics.pointing_hit(cam, region)
    assert not metrics.pointing_hit(cam, region, tolerance=4.0)  # distance to (5, 5): 4.24
    assert metrics.pointing_hit(cam, region, tolerance=4.3)
    cam[6, 6] = 2.0
    assert metrics.pointing_hit(cam, region)
    # An empty map has no peak: it never hits, even though argmax is (0, 0) inside the region.
    region[0, 0] = True
    assert not metrics.pointing_hit(np.zeros((10, 10)), region)


def test_energy_in_region_is_the_share_of_the_maps_mass():
    cam = np.zeros((4, 4))
    cam[0, 0], cam[3, 3] = 3.0, 1.0
    region = np.zeros((4, 4), bool)
    region[:2, :2] = True
    assert metrics.energy_in_region(cam, region) == pytest.approx(0.75)
    assert metrics.energy_in_region(np.ones((4, 4)), region) == pytest.approx(0.25)
    assert metrics.energy_in_region(np.zeros((4, 4)), region) == 0.0


def test_average_drop_and_increase_follow_the_gradcam_plus_plus_formulas():
    y = np.array([0.8, 0.5, 0.2, 0.0])
    o = np.array([0.2, 0.5, 0.6, 0.1])
    np.testing.assert_allclose(metrics.average_drop(y, o), [75.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(metrics.increase_in_confidence(y, o), [0, 0, 100, 100])


def test_gaussian_blur_preserves_constants_and_mass_and_smooths():
    flat = np.full((9, 11, 3), 7.0, np.float32)
    np.testing.assert_allclose(metrics.gaussian_blur(flat, 2.0), flat, rtol=1e-6)
    spike = np.zeros((31, 31, 1), np.float32)
    spike[15, 15] = 1.0
    blurred = metrics.gaussian_blur(spike, 2.0)
    assert blurred.sum() == pytest.approx(1.0, rel=1e-4)  # interior: no mass lost
    assert blurred[15, 15, 0] == pytest.approx(1 / (2 * math.pi * 4), rel=0.05)
    assert blurred[15, 15, 0] > blurred[15, 17, 0] > blurred[15, 20, 0] > 0
    np.testing.assert_array_equal(metrics.gaussian_blur(spike, 0.0), spike)
    tiny = metrics.gaussian_blur(np.arange(6, dtype=np.float32).reshape(2, 1, 3), 3.0)
    assert tiny.shape == (2, 1, 3) and np.isfinite(tiny).all()


def test_pixel_ranks_put_hot_pixels_first_and_break_ties_not_in_raster_order():
    cam = np.zeros((8, 8))
    cam[5, 6], cam[1, 1] = 1.0, 0.5
    ranks = metrics.pixel_ranks(cam)
    assert ranks[5, 6] == 0 and ranks[1, 1] == 1
    assert sorted(ranks.ravel().tolist()) == list(range(64))
    flat_order = np.argsort(ranks.ravel())[2:]  # the zero pixels, in deletion order
    assert not np.array_equal(flat_order, np.sort(flat_order)), "ties removed in raster order"
    np.testing.assert_array_equal(metrics.pixel_ranks(cam), ranks)  # deterministic


def test_compose_and_step_counts_build_deletion_and_insertion_images():
    image = np.full((2, 2, 1), 10.0)
    blurred = np.zeros((2, 2, 1))
    ranks = np.array([[0, 3], [1, 2]])
    np.testing.assert_array_equal(metrics.step_counts(4, 2), [0, 2, 4])
    deleted = metrics.compose(image, blurred, ranks, 2)
    np.testing.assert_array_equal(deleted[..., 0], [[0, 10], [0, 10]])
    inserted = metrics.compose(blurred, image, ranks, 2)
    np.testing.assert_array_equal(inserted[..., 0], [[10, 0], [10, 0]])


def test_trapezoid_auc():
    assert metrics.trapezoid_auc([1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert metrics.trapezoid_auc([1.0, 0.0]) == pytest.approx(0.5)
    assert metrics.trapezoid_auc(np.linspace(1, 0, 21)) == pytest.approx(0.5)
    assert metrics.trapezoid_auc([1.0, 0.0, 0.0, 0.0, 0.0]) == pytest.approx(0.125)
    with pytest.raises(ValueError):
        metrics.trapezoid_auc([1.0])


def test_pearson_top_region_and_iou():
    rng = np.random.default_rng(1)
    a = rng.random((6, 6))
    assert metrics.pearson(a, a) == pytest.approx(1.0)
    assert metrics.pearson(a, -a) == pytest.approx(-1.0)
    assert metrics.pearson(a, 2 * a + 1) == pytest.approx(1.0)
    assert metrics.pearson(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    assert metrics.pearson(np.zeros((3, 3)), a[:3, :3]) == 0.0
    top = metrics.top_region(a)
    assert top.sum() == math.ceil(0.2 * 36)
    assert a[top].min() >= a[~top].max()
    assert metrics.iou(top, top) == 1.0
    assert metrics.iou(top, ~top) == 0.0
    left = np.zeros((2, 4), bool)
    left[:, :2] = True
    middle = np.zeros((2, 4), bool)
    middle[:, 1:3] = True
    assert metrics.iou(left, middle) == pytest.approx(2 / 6)


def test_bootstrap_interval_contains_the_mean_and_narrows_with_more_data():
    rng = np.random.default_rng(2)
    few = rng.normal(0.5, 0.1, 10)
    many = rng.normal(0.5, 0.1, 1000)
    mean, low, high = metrics.bootstrap_mean_ci(few)
    assert low <= mean <= high and mean == pytest.approx(few.mean())
    _, low2, high2 = metrics.bootstrap_mean_ci(many)
    assert high2 - low2 < high - low
    assert low2 < 0.5 < high2
    assert metrics.bootstrap_mean_ci([0.3]) == (0.3, 0.3, 0.3)
    assert metrics.bootstrap_mean_ci([1, 1, 1]) == (1.0, 1.0, 1.0)
    assert metrics.bootstrap_mean_ci(few) == metrics.bootstrap_mean_ci(few)  # seeded
    with pytest.raises(ValueError):
        metrics.bootstrap_mean_ci([])


# =========================================================================== faithfulness


def _region_scorer(region: np.ndarray):
    """A fake model whose class-0 probability is the mean brightness of ``region`` / 255."""

    def score(images: np.ndarray) -> np.ndarray:
        p = images[:, region].mean(axis=(1, 2)) / 255.0
        return np.stack([p, 1 - p], axis=1)

    return score


def test_faithfulness_protocol_on_a_model_that_only_looks_at_one_region():
    size = 16
    region = np.zeros((size, size), bool)
    region[4:8, 4:8] = True
    pixels = np.full((2, size, size, 3), 255.0, np.float32)
    good = region.astype(np.float32)  # the map is exactly the evidence
    bad = 1.0 - good  # everything but the evidence
    calls = []

    def score(images):
        calls.append(len(images))
        return _region_scorer(region)(images)

    protocol = faithfulness.Protocol(steps=8, blur_sigma=0.0)  # baseline: the image itself
    result = faithfulness.measure(score, pixels, np.stack([good, bad]), np.array([0, 0]),
                                  protocol, chunk=10)
    assert sum(calls) == 2 * (2 * 8 + 1) and max(calls) <= 10  # 2S + 1 images each, chunked
    np.testing.assert_allclose(result.original, [1.0, 1.0])
    np.testing.assert_allclose(result.explained, [1.0, 0.0])  # image × map
    np.testing.assert_allclose(result.average_drop, [0.0, 100.0])
    assert result.deletion.shape == (2, 9) and result.insertion.shape == (2, 9)
    assert protocol.to_json()["steps"] == 8


def test_deletion_and_insertion_rank_the_true_evidence_map_above_random_maps():
    size = 24
    region = np.zeros((size, size), bool)
    region[8:14, 10:16] = True
    pixels = np.where(region[None, ..., None], 255.0, 0.0).astype(np.float32)  # a bright patch
    score = _region_scorer(region)
    protocol = faithfulness.Protocol(steps=12, blur_sigma=3.0)
    truth = faithfulness.measure(score, pixels, region[None].astype(np.float32), np.array([0]),
                                 protocol)
    rng = np.random.default_rng(0)
    random = faithfulness.measure(score, np.repeat(pixels, 5, axis=0),
                                  rng.random((5, size, size)).astype(np.float32),
                                  np.zeros(5, int), protocol)
    # The curves start and end at the image and at the blurred image.
    assert truth.deletion[0, 0] == pytest.approx(1.0)
    assert truth.deletion[0, -1] == truth.insertion[0, 0] < 0.8
    # Removing the patch first destroys the evidence in the first steps; a random order doesn't.
    assert truth.deletion_auc[0] < random.deletion_auc.mean() - 0.1
    assert truth.insertion_auc[0] > random.insertion_auc.mean() + 0.1


def test_protocol_rejects_nonsense():
    with pytest.raises(ValueError):
        faithfulness.Protocol(steps=0)
    with pytest.raises(ValueError):
        faithfulness.Protocol(blur_sigma=-1)
    with pytest.raises(ValueError):
        faithfulness.measure(lambda x: x, np.zeros((1, 4, 4, 3)), np.zeros((1, 3, 3)),
                             np.array([0]))


# =========================================================================== manifest


def test_csv_manifest_with_repeated_bbox_columns_masks_and_row_thresholds(tmp_path):
    text = (
        "path,expected,bbox,bbox,min_energy_in_box,max_average_drop,note\n"
        "a.png,3,\"1,2,10,20\",\"30,30,40,40\",0.5,off,first\n"
        "\n"
        "# a comment line\n"
        "sub/b.jpg,tabby,\"0,0,5,5;6,6,9,9\",,,,\n"
        "c.png,,,,,,\n"
    )
    manifest = tmp_path / "m.csv"
    manifest.write_text(text)
    parsed = load_manifest(manifest)
    assert parsed.format == "csv" and len(parsed.rows) == 3
    a, b, c = parsed.rows
    assert (a.line, b.line, c.line) == (2, 5, 6)
    assert a.path == tmp_path / "a.png" and a.spec_path == "a.png" and a.id == "a.png"
    assert a.expected == "3" and a.boxes == ((1, 2, 10, 20), (30, 30, 40, 40))
    assert a.thresholds == {"min_energy_in_box": 0.5, "max_average_drop": "off"}
    assert a.note == "first"
    assert b.expected == "tabby" and len(b.boxes) == 2 and b.path == tmp_path / "sub" / "b.jpg"
    assert c.expected is None and not c.has_region and c.thresholds == {}


def test_jsonl_manifest(tmp_path):
    lines = [
        {"path": "a.png", "expected": 281, "bbox": [1, 2, 3, 4]},
        {"path": "b.png", "bbox": ["1,1,2,2", [3, 3, 4, 4]], "id": "bee"},
        {"path": "c.png", "mask": "masks/c.png", "min_pointing": 1},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    a, b, c = load_manifest(manifest).rows
    assert a.expected == 281 and a.boxes == ((1, 2, 3, 4),)
    assert b.id == "bee" and b.boxes == ((1, 1, 2, 2), (3, 3, 4, 4))
    assert c.mask == tmp_path / "masks" / "c.png" and c.thresholds == {"min_pointing": 1.0}


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("path,expected\na.png,1\nb.png,2,extra\n", 3, "3 fields but the header has 2"),
        ("path,bbox\na.png,\"1,2,3\"\n", 2, "expected 4 numbers"),
        ("path,bbox\na.png,\"5,5,1,1\"\n", 2, "needs x0 < x1"),
        ("path,bbox\na.png,\"a,b,c,d\"\n", 2, "not numbers"),
        ("path,min_energy_in_box\na.png,lots\n", 2, "must be a number or 'off'"),
        ("path,min_enrgy_in_box\na.png,0.5\n", 1, "did you mean: min_energy_in_box"),
        ("expected\n3\n", 1, "a 'path' column is required"),
        ("path,bbox,mask\na.png,\"1,1,2,2\",m.png\n", 2, "not both"),
        ("path\na.png\n\nb.png\na.png\n", 5, "listed twice (first on line 2)"),
        ("path,expected\n,3\n", 2, "'path' is missing"),
        ("path\n", None, "no rows"),
    ],
)
def test_malformed_csv_rows_name_the_line(text, line, fragment):
    with pytest.raises(ManifestError) as info:
        parse_csv(text, Path("m.csv"))
    message = str(info.value)
    assert fragment in message
    if line is not None:
        assert f"m.csv:{line}:" in message


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ('{"path": "a.png"}\n{"path": "b.png", \n', 2, "invalid JSON"),
        ('{"path": "a.png"}\n[1, 2]\n', 2, "must be a JSON object"),
        ('{"path": "a.png", "expected": 1.5}\n', 1, "'expected' must be"),
        ('{"path": "a.png", "bbox": [1, 2]}\n', 1, "expected 4 numbers"),
        ('{"path": "a.png", "colour": "red"}\n', 1, "unknown column 'colour'"),
    ],
)
def test_malformed_jsonl_rows_name_the_line(text, line, fragment):
    with pytest.raises(ManifestError) as info:
        parse_jsonl(text, Path("m.jsonl"))
    assert fragment in str(info.value) and f"m.jsonl:{line}:" in str(info.value)


def test_missing_or_binary_manifest_is_a_usage_error(tmp_path):
    with pytest.raises(ManifestError, match="no such file"):
        load_manifest(tmp_path / "absent.csv")
    binary = tmp_path / "m.csv"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ManifestError, match="not UTF-8"):
        load_manifest(binary)


# =========================================================================== checks


def test_row_thresholds_override_global_ones_and_off_removes_a_check():
    merged = checks.effective_thresholds(
        {"min_top1": 1.0, "min_energy_in_box": 0.3, "max_map_drift": None},
        {"min_energy_in_box": 0.1, "min_top1": "off", "max_average_drop": 50},
    )
    assert merged == {"min_energy_in_box": (0.1, "row"), "max_average_drop": (50.0, "row")}


def test_evaluate_passes_fails_and_skips_missing_metrics():
    limits = {"min_top1": (1.0, "global"), "min_energy_in_box": (0.3, "global"),
              "max_average_drop": (40.0, "row")}
    result = checks.evaluate({"top1": 1, "energy_in_box": None, "average_drop": 55.0}, limits)
    assert [c.status for c in result] == ["pass", "skip", "fail"]
    assert "needs a bbox or mask" in result[1].message
    assert result[2].op == "<=" and result[2].source == "row"
    assert "required <= 40" in result[2].message
    assert {t.option for t in checks.THRESHOLDS} >= {"--min-top1", "--min-energy-in-box",
                                                     "--max-average-drop", "--max-map-drift"}


def test_mean_checks_parse_names_and_compare_the_manifest_mean():
    from camcli.errors import UsageError

    assert checks.parse_mean_check("min_energy_in_box=0.3") == ("min_energy_in_box", 0.3)
    assert checks.parse_mean_check("--min-top1=0.9") == ("min_top1", 0.9)
    for bad, fragment in (("min_top1", "NAME=VALUE"), ("min_top1=high", "not a number"),
                          ("min_energy_in_bx=0.3", "did you mean: min_energy_in_box"),
                          ("min_top1=nan", "finite")):
        with pytest.raises(UsageError, match=fragment):
            checks.parse_mean_check(bad)
    aggregates = {"energy_in_box": {"n": 4, "mean": 0.25, "ci95": [0.1, 0.4]},
                  "top1": {"n": 4, "mean": 1.0, "ci95": [1.0, 1.0]}}
    result = checks.evaluate_means(
        aggregates, {"min_energy_in_box": 0.3, "min_top1": 0.9, "max_map_drift": 0.2})
    assert [(c.name, c.status, c.source) for c in result] == [
        ("min_top1", "pass", "mean"), ("min_energy_in_box", "fail", "mean"),
        ("max_map_drift", "skip", "mean")]
    assert "over 4 images" in result[1].message and "required >= 0.3" in result[1].message


# =========================================================================== baseline


def test_map_similarity_is_exact_for_the_same_map_and_works_across_resolutions():
    rng = np.random.default_rng(3)
    cam = rng.random((7, 7)).astype(np.float32)
    same = compare.map_similarity(cam, cam)
    assert same == {"map_correlation": pytest.approx(1.0), "map_iou_top20": 1.0, "map_drift": 0.0}
    moved = np.roll(cam, 3, axis=1)
    assert compare.map_similarity(cam, moved)["map_drift"] > 0.5
    yy, xx = np.mgrid[0:7, 0:7]
    bump = np.exp(-((yy - 2) ** 2 + (xx - 4) ** 2) / 4.0).astype(np.float32)
    fine = resize(bump, 14, 14)  # the same map from a layer of twice the resolution
    similar = compare.map_similarity(bump, fine)
    assert similar["map_correlation"] > 0.99 and similar["map_drift"] < 0.3


def test_encoded_maps_round_trip_and_an_audit_compared_with_itself_has_zero_drift():
    rng = np.random.default_rng(4)
    cam = rng.random((5, 6)).astype(np.float32)
    stored = json.loads(json.dumps(compare.encode_map(cam)))
    np.testing.assert_allclose(compare.decode_map(stored), cam, atol=1e-4)
    previous = {
        "explained": {"index": 1, "probability": 0.7},
        "predictions": [{"index": 1}],
        "input": {"sha256": "abc"},
        "map": stored,
    }
    result = compare.compare_image(cam, previous, 1, np.array([0.3, 0.7]), "abc")
    assert result["map_drift"] == 0.0 and result["top1_changed"] is False
    assert result["probability_change"] == pytest.approx(0.0) and result["same_image"]
    other = compare.compare_image(cam.T.copy().reshape(5, 6), previous, 0,
                                  np.array([0.9, 0.1]), "xyz")
    assert other["top1_changed"] and other["probability_change"] == pytest.approx(-0.6)
    assert not other["same_image"]


def test_load_baseline_rejects_files_that_are_not_audits(tmp_path):
    from camcli.errors import UsageError

    with pytest.raises(UsageError, match="no such file"):
        compare.load_baseline(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema_version": 1}')
    with pytest.raises(UsageError, match="not a camcli audit.json"):
        compare.load_baseline(bad)
    bad.write_text("{nope")
    with pytest.raises(UsageError, match="not a readable audit.json"):
        compare.load_baseline(bad)
    bad.write_text(json.dumps({"schema": "camcli-audit", "schema_version": 99}))
    with pytest.raises(UsageError, match="schema version 99"):
        compare.load_baseline(bad)


# =========================================================================== reports


def _image(id_: str, statuses: list[str], energy: float | None = 0.5, ok: bool = True) -> dict:
    if not ok:
        return {"id": id_, "path": id_, "line": 2, "ok": False, "error": "no such file",
                "note": None, "passed": False,
                "checks": [{"name": "load", "status": "error", "message": "cannot audit"}]}
    return {
        "id": id_, "path": id_, "line": 3, "ok": True, "note": "a <b>note</b>",
        "metrics": {"top1": 1, "energy_in_box": energy},
        "checks": [{"name": f"check{i}", "status": s, "message": f"{s} & <msg>"}
                   for i, s in enumerate(statuses)],
        "passed": "fail" not in statuses,
        "explained": {"index": 0, "label": "square", "reason": "expected"},
        "expected": {"index": 0, "label": "square"},
        "predictions": [{"index": 0, "label": "square", "probability": 0.9}],
        "overlay": f"overlays/{id_}.cam.png",
    }


def _record(images: list[dict], mean_checks: list[dict] = ()) -> dict:
    return {
        "mean_checks": list(mean_checks),
        "manifest": {"path": "/x/manifest.csv", "sha256": "0" * 64},
        "model": {"name": "m.keras", "layer": "features"},
        "method": "gradcam",
        "created": "2026-01-01T00:00:00+00:00",
        "seconds": 1.5,
        "settings": {"steps": 20},
        "protocol": {"faithfulness": {}},
        "baseline": None,
        "images": images,
        "aggregates": reports.aggregate(images),
        "summary": reports.summarize(images, list(mean_checks)),
    }


def test_junit_counts_failures_errors_and_skips_per_image_and_check():
    record = _record([
        _image("a.png", ["pass", "fail"]),
        _image("b.png", ["pass", "skip"]),
        _image("c.png", [], ok=False),
    ])
    root = ET.fromstring(reports.junit_xml(record))
    assert root.tag == "testsuites"
    cases = root.findall(".//testcase")
    assert len(cases) == 5 == int(root.get("tests"))
    assert int(root.get("failures")) == 1 == len(root.findall(".//failure"))
    assert int(root.get("errors")) == 1 == len(root.findall(".//error"))
    assert int(root.get("skipped")) == 1 == len(root.findall(".//skipped"))
    failure = root.find(".//testcase[@classname='audit.a.png'][@name='check1']/failure")
    assert failure is not None and "fail & <msg>" in failure.get("message")
    assert record["summary"]["passed"] is False and record["summary"]["failed_images"] == 2


def test_a_failed_mean_check_fails_the_audit_and_is_a_junit_case():
    mean = {"name": "min_energy_in_box", "status": "fail", "message": "mean too low"}
    record = _record([_image("a.png", ["pass"])], [mean])
    assert record["summary"]["passed"] is False and record["summary"]["failed_images"] == 0
    root = ET.fromstring(reports.junit_xml(record))
    case = root.find(".//testcase[@classname='audit.mean'][@name='min_energy_in_box']")
    assert case is not None and case.find("failure") is not None
    assert int(root.get("tests")) == 2 and int(root.get("failures")) == 1
    assert "mean of 1 images | min_energy_in_box" in reports.summary_markdown(record)
    assert "mean too low" in htmlreport.report_html(record, {}).decode()


def test_aggregates_skip_missing_values_and_summary_passes_only_without_failures():
    images = [_image("a", ["pass"], 0.2), _image("b", ["pass"], 0.4), _image("c", [], None)]
    record = _record(images)
    energy = record["aggregates"]["energy_in_box"]
    assert energy["n"] == 2 and energy["mean"] == pytest.approx(0.3)
    assert energy["ci95"][0] <= 0.3 <= energy["ci95"][1]
    assert record["aggregates"]["top1"]["n"] == 3
    assert record["summary"]["passed"] is True
    markdown = reports.summary_markdown(record)
    assert "passed" in markdown and "| energy_in_box | 0.3 |" in markdown


def test_summary_markdown_lists_failures_and_is_appended_to_the_step_summary(tmp_path):
    record = _record([_image("a|b.png", ["fail"])])
    markdown = reports.summary_markdown(record)
    assert "failed" in markdown and "a\\|b.png" in markdown  # pipes escaped in tables
    target = tmp_path / "step_summary.md"
    target.write_text("earlier step\n")
    assert reports.append_step_summary(markdown, {"GITHUB_STEP_SUMMARY": str(target)}) == target
    assert target.read_text().startswith("earlier step\n## camcli audit")
    assert reports.append_step_summary(markdown, {}) is None


def test_html_report_has_one_card_per_image_and_escapes_text():
    record = _record([_image("a.png", ["pass"]), _image("<b>.png", ["fail"]),
                      _image("c.png", [], ok=False)])
    page = htmlreport.report_html(record, {"a.png": ("data:image/jpeg;base64,AA", "data:x")})
    text = page.decode()
    assert text.count('<div class="card ') == 3
    assert "<b>.png" not in text and "&lt;b&gt;.png" in text
    assert "a &lt;b&gt;note&lt;/b&gt;" in text
    assert 'data-energyinbox="0.5"' in text
    assert "http://" not in text and "https://" not in text  # self-contained


def test_write_report_replaces_files_atomically(tmp_path):
    target = tmp_path / "out" / "audit.json"
    reports.write_report(target, b"one")
    reports.write_report(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["audit.json"]


# --------------------------------------------------------------------------- hostile strings
# Ids, paths, labels and reasons come from manifests and models other people write: in
# summary.md (rendered by GitHub as $GITHUB_STEP_SUMMARY) and report.html they are text, never
# markup. The Markdown is rendered by markdown-it-py (CommonMark with GitHub's tables).

HOSTILE = ("a`</code><img src=x onerror=alert(1)>|b\n## injected <!-- `` *em* _u_ "
           "[link](javascript:alert(1)) &amp; ~~s~~ \\`")


class _Elements(HTMLParser):
    """Tags, attributes and the text inside each kind of element of an HTML fragment."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.open: list[str] = []
        self.text: dict[str, list[str]] = {}
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self.open.append(tag)
        self.text.setdefault(tag, []).append("")

    def handle_endtag(self, tag):
        if tag in self.open:
            self.open.remove(tag)

    def handle_data(self, data):
        for tag in set(self.open):
            self.text[tag][-1] += data


def _hostile_record() -> dict:
    image = _image(HOSTILE, ["fail"])
    image["checks"][0].update(name=f"min_{HOSTILE}", message=f"energy for {HOSTILE}: fail")
    image["explained"]["label"] = image["expected"]["label"] = HOSTILE
    image["predictions"][0]["label"] = HOSTILE
    image["note"] = HOSTILE
    record = _record([image, _image("<script>alert(2)</script>", [], ok=False)])
    record["model"] = {"name": HOSTILE, "layer": HOSTILE}
    record["method"] = HOSTILE
    record["manifest"]["path"] = f"/x/{HOSTILE}.csv"
    record["baseline"] = {"path": f"/y/{HOSTILE}.json"}
    return record


def test_summary_markdown_renders_hostile_ids_paths_labels_and_reasons_as_text():
    from markdown_it import MarkdownIt

    markdown = reports.summary_markdown(_hostile_record())
    html = MarkdownIt("commonmark").enable("table").render(markdown)
    page = _Elements(html)
    tags = {tag for tag, _ in page.tags}
    assert tags <= {"h2", "h3", "p", "code", "table", "thead", "tbody", "tr", "th", "td"}, html
    assert all(attributes in ({}, {"style": "text-align:right"}) for _, attributes in page.tags)
    one_line = HOSTILE.replace("\n", "\\x0a")
    # model, layer, method, manifest, baseline; then the failing image's id in its table cell
    name = one_line.split("/")[-1]  # the manifest's and baseline's file names are shown
    assert page.text["code"][:6] == [one_line, one_line, one_line, f"{name}.csv",
                                      f"{name}.json", one_line]
    assert len(page.text["h2"]) == 1 and "injected" not in page.text["h2"][0]
    rows = html.split("<h3>Failed checks</h3>")[1].split("<tr>")[2:]
    assert len(rows) == 2  # the failed check and the unreadable image, three cells each
    assert all(row.count("<td>") == 3 for row in rows), html
    cells = _Elements(rows[0]).text["td"]
    assert cells[1:] == [f"min_{one_line}", f"energy for {one_line}: fail"]
    assert _Elements(rows[1]).text["code"][0] == "<script>alert(2)</script>"


@pytest.mark.parametrize("text", ["`", "``a`", " b ", "x|y", "", "a\\|b", "c\r\nd\u2028e"])
def test_code_spans_and_text_keep_any_string_literal(text):
    from markdown_it import MarkdownIt

    render = MarkdownIt("commonmark").enable("table").render
    shown = (text.replace("\r", "\\x0d").replace("\n", "\\x0a").replace("\u2028", "\\u2028")
             or " ")  # an empty code span shows a space
    assert _Elements(render(reports.md_code(text))).text["code"] == [shown]
    table = render(f"| a | b |\n| --- | --- |\n| {reports.md_code(text, table=True)} | "
                   f"{reports.md_text(text)} |\n")
    assert _Elements(table).text["code"] == [shown]
    assert _Elements(table).text["td"][1] == shown.strip()  # a cell's outer spaces are trimmed


def test_audit_html_report_shows_hostile_strings_as_text():
    record = _hostile_record()
    page = _Elements(htmlreport.report_html(record, {}).decode())
    assert not [t for t, a in page.tags if t == "script" and "type" not in a][1:]  # its own one
    assert not [a for _, a in page.tags if any(k.startswith("on") for k in a)]
    assert sorted(t for t, _ in page.tags if t == "img") == ["img", "img"]  # one card's pictures
    cards = [a for t, a in page.tags if t == "div" and "card" in a.get("class", "")]
    assert [card["data-id"] for card in cards] == [HOSTILE, "<script>alert(2)</script>"]
    assert page.text["title"] == [f"camcli audit — {HOSTILE.split('/')[-1]}.csv"]
    assert any(HOSTILE in text for text in page.text["li"])  # the check's name and message
