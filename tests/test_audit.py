"""``camcli audit`` end to end, on small CNNs trained here whose evidence we know.

Images (tests/synthetic.py) hold one bright object — square, cross or ring — that decides the
class, at a known box. Two models are trained once for the module:

- ``good``: trained on those images; it looks at the object;
- ``shortcut``: trained on images whose class is decided by a corner watermark (a pattern per
  class) while the object is random. On audit images whose watermark and object agree, it is
  just as accurate — and looks at the corner. The case an audit exists for.

The audits must show: ``good`` passes with sensible thresholds; the same model fails the energy
check when the objects move but the manifest boxes do not; ``shortcut`` passes top-1 and fails
energy-in-box; ``--baseline`` sees the drift from ``good`` to ``shortcut`` and none against
itself; junit.xml counts the failures; report.html shows one card per image in Chromium; and
the command's exit codes (0 / 1 / 2) and error messages are those of the issue.

Thresholds: top-1 is checked per image. Localisation is checked on the manifest's mean
(``--mean``): an 8×8 Grad-CAM of a tiny CNN puts anywhere from 10 % to 60 % of its energy on a
small object, image by image, so a per-image energy floor low enough for every good map would
also pass many bad ones; the mean over a dozen images separates the models by a wide margin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from browser import run_once
from PIL import Image
from synthetic import SHAPES, make_shapes

from camcli.audit import AuditSettings, run_audit

CAMCLI = Path(sys.executable).with_name("camcli")
SIZE = 64
CLASSES = 3
NAMES = SHAPES[:CLASSES]
OBJECT_SIDE = (18, 26)
MARK = 12  # the watermark: a MARK × MARK pattern in the top-left corner
N_IMAGES = 12
#: Sensible thresholds: every image classified right; on average the peak on the object and a
#: fair share of the map's energy on it (the boxes cover 8-17 % of these images).
THRESHOLDS = {"min_top1": 1.0}
MEANS = {"min_energy_in_box": 0.2, "min_pointing": 0.75}


# --------------------------------------------------------------------------- data and models


def _watermark(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Stamp each image's class pattern (checkerboard, rows, columns) in the top-left corner."""
    yy, xx = np.mgrid[0:MARK, 0:MARK]
    patterns = [(yy // 3 + xx // 3) % 2, (yy // 3) % 2, (xx // 3) % 2]
    out = images.copy()
    for i, label in enumerate(labels):
        out[i, :MARK, :MARK, :] = patterns[label][..., None]
    return out


def _cnn(name: str):
    import keras

    inputs = keras.Input((SIZE, SIZE, 3))
    x = inputs
    for filters in (16, 32, 48):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="features")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(CLASSES, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def _fit(model, x, y, epochs: int) -> None:
    import keras

    steps = epochs * -(-len(x) // 32)
    model.compile(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(3e-3, steps)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0)


def _to_uint8(images: np.ndarray) -> np.ndarray:
    return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


def _write_set(folder: Path, pixels: np.ndarray, labels, boxes, name: str, extra_rows=()) -> Path:
    """PNGs under ``folder/name/`` and ``folder/name.csv`` listing them with their boxes."""
    (folder / name).mkdir(parents=True)
    lines = ["path,expected,bbox"]
    for i, (picture, label, box) in enumerate(zip(pixels, labels, boxes, strict=True)):
        Image.fromarray(picture).save(folder / name / f"img{i}.png")
        lines.append(f'{name}/img{i}.png,{NAMES[label]},"{",".join(map(str, box))}"')
    lines.extend(extra_rows)
    manifest = folder / f"{name}.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Both models (saved as .keras files), their explainers and the audit image sets."""
    import keras

    from camcli.api import Explainer

    folder = tmp_path_factory.mktemp("audit")
    keras.utils.set_random_seed(0)
    train = make_shapes(1200, seed=100, size=SIZE, classes=CLASSES, object_side=OBJECT_SIDE)
    good = _cnn("good")
    _fit(good, train.images, train.labels, epochs=6)
    marks = np.random.default_rng(5).permutation(train.labels)  # unrelated to the objects
    shortcut = _cnn("shortcut")
    _fit(shortcut, _watermark(train.images, marks), marks, epochs=4)
    labels = folder / "labels.txt"
    labels.write_text("\n".join(NAMES) + "\n")
    paths = {}
    for name, model in (("good", good), ("shortcut", shortcut)):
        paths[name] = folder / f"{name}.keras"
        model.save(str(paths[name]))

    # Audit images: objects clear of the watermark corner, so a box never contains the mark.
    made = make_shapes(40, seed=777, size=SIZE, classes=CLASSES, object_side=OBJECT_SIDE)
    keep = [i for i, (x0, y0, _, _) in enumerate(made.boxes)
            if x0 >= MARK + 2 or y0 >= MARK + 2][:N_IMAGES]
    images, labels_, boxes = made.images[keep], made.labels[keep], made.boxes[keep]
    data = folder / "data"
    clean = _write_set(data, _to_uint8(images), labels_, boxes, "clean")
    # The same objects moved by half the image (wrapping round): the boxes are now stale.
    moved = _write_set(data, _to_uint8(np.roll(images, (SIZE // 2, SIZE // 2), axis=(1, 2))),
                       labels_, boxes, "moved")
    marked = _write_set(data, _to_uint8(_watermark(images, labels_)), labels_, boxes, "marked")

    def explainer(name: str):
        return Explainer(model=str(paths[name]), preprocess="scale01", labels=labels,
                         batch_size=4)

    return SimpleNamespace(folder=folder, paths=paths, labels=labels, data=data, clean=clean,
                           moved=moved, marked=marked, good=explainer("good"),
                           shortcut=explainer("shortcut"), n=len(keep))


def _audit(world, manifest: Path, which: str, out: str, **settings):
    explainer = getattr(world, which)
    settings.setdefault("thresholds", THRESHOLDS)
    settings.setdefault("mean_thresholds", MEANS)
    return run_audit(manifest, explainer, AuditSettings(
        out_dir=world.folder / out, step_summary=False, **settings))


def _mean_check(result, name: str) -> dict:
    (check,) = [c for c in result.record["mean_checks"] if c["name"] == name]
    return check


def _checks(result, name: str) -> list[dict]:
    return [c for image in result.record["images"] for c in image["checks"] if c["name"] == name]


def _statuses(result, name: str) -> list[str]:
    return [c["status"] for c in _checks(result, name)]


def _print_metric(label: str, result, metric: str) -> None:
    values = [image["metrics"][metric] for image in result.record["images"]]
    print(f"\n{label}: {metric} = {np.round(values, 3).tolist()}")


# --------------------------------------------------------------------------- the audits


@pytest.fixture(scope="module")
def clean_audit(world):
    return _audit(world, world.clean, "good", "clean_out")


def test_good_model_passes_with_sensible_thresholds(world, clean_audit):
    result = clean_audit
    _print_metric("good model, clean images", result, "energy_in_box")
    record = result.record
    assert world.n == N_IMAGES
    assert result.passed and int(result.exit_status) == 0, _summary(result)
    assert record["summary"]["checks"] == N_IMAGES * len(THRESHOLDS) + len(MEANS)
    assert set(_statuses(result, "min_top1")) == {"pass"}
    assert _mean_check(result, "min_energy_in_box")["status"] == "pass"
    assert _mean_check(result, "min_pointing")["status"] == "pass"
    # The protocol is recorded, so numbers from two audits are comparable.
    faith = record["protocol"]["faithfulness"]
    assert faith["steps"] == 20 and faith["baseline"]["kind"] == "gaussian_blur"
    assert faith["baseline"]["sigma_px"] == pytest.approx(10.0 * SIZE / 224, abs=1e-3)
    assert "softmax" in faith["score"]
    assert record["schema"] == "camcli-audit" and record["schema_version"] == 1
    assert record["settings"]["thresholds"] == THRESHOLDS
    assert record["settings"]["mean_thresholds"] == MEANS
    for image in record["images"]:
        m = image["metrics"]
        assert 0.0 <= m["energy_in_box"] <= 1.0 and m["pointing"] in (0, 1)
        assert 0.0 <= m["deletion_auc"] <= 1.0 and 0.0 <= m["insertion_auc"] <= 1.0
        assert 0.0 <= m["average_drop"] <= 100.0 and m["increase_in_confidence"] in (0, 100)
        assert image["explained"]["reason"] == "expected"
    aggregates = record["aggregates"]
    assert aggregates["top1"]["mean"] == 1.0 and aggregates["top1"]["n"] == N_IMAGES
    low, high = aggregates["energy_in_box"]["ci95"]
    assert low <= aggregates["energy_in_box"]["mean"] <= high
    # A faithful map: deleting its hottest pixels first hurts more than inserting them helps.
    assert aggregates["insertion_auc"]["mean"] > aggregates["deletion_auc"]["mean"]


def _summary(result) -> str:
    return result.files["summary.md"].read_text()


def test_outputs_go_to_the_out_folder_not_beside_the_inputs(world, clean_audit):
    out = world.folder / "clean_out"
    assert sorted(p.name for p in out.iterdir()) == [
        "audit.json", "junit.xml", "overlays", "report.html", "summary.md"]
    overlays = sorted((out / "overlays").iterdir())
    assert len(overlays) == N_IMAGES
    assert all(p.name.endswith(".png.cam.png") for p in overlays)
    assert sorted(p.name for p in (world.data / "clean").iterdir()) == sorted(
        f"img{i}.png" for i in range(N_IMAGES))
    record = json.loads((out / "audit.json").read_text())
    assert record["images"][0]["overlay"] == "overlays/" + overlays[0].name
    with Image.open(overlays[0]) as overlay:
        assert overlay.size == (SIZE, SIZE)


def test_moved_objects_with_stale_boxes_fail_the_energy_check(world, clean_audit):
    result = _audit(world, world.moved, "good", "moved_out")
    _print_metric("good model, moved objects", result, "energy_in_box")
    assert not result.passed and int(result.exit_status) == 1
    energy = _mean_check(result, "min_energy_in_box")
    assert energy["status"] == "fail", energy
    before = clean_audit.record["aggregates"]["energy_in_box"]["mean"]
    assert energy["value"] < before / 2
    # The model still recognises the objects: it is the map/box agreement that failed.
    assert _statuses(result, "min_top1").count("pass") >= N_IMAGES * 3 // 4

    # junit.xml: one test case per image and check, plus the mean checks; its failures are
    # exactly the failed checks of audit.json.
    root = ET.parse(world.folder / "moved_out" / "junit.xml").getroot()
    cases = root.findall(".//testcase")
    failed = [c for c in cases if c.find("failure") is not None]
    expected = [(f"audit.{image['id']}", check["name"])
                for image in result.record["images"] for check in image["checks"]
                if check["status"] == "fail"]
    expected += [("audit.mean", c["name"]) for c in result.record["mean_checks"]
                 if c["status"] == "fail"]
    assert len(cases) == N_IMAGES * len(THRESHOLDS) + len(MEANS) == int(root.get("tests"))
    assert sorted((c.get("classname"), c.get("name")) for c in failed) == sorted(expected)
    assert int(root.get("failures")) == len(expected) == result.record["summary"]["failed_checks"]
    assert ("audit.mean", "min_energy_in_box") in expected


def test_shortcut_model_passes_top1_but_fails_energy_in_box(world):
    result = _audit(world, world.marked, "shortcut", "shortcut_out")
    _print_metric("shortcut model, watermarked images", result, "energy_in_box")
    assert set(_statuses(result, "min_top1")) == {"pass"}, "the shortcut model is accurate"
    assert _mean_check(result, "min_energy_in_box")["status"] == "fail"
    assert not result.passed and int(result.exit_status) == 1
    # Its maps sit on the watermark: most peaks are nearer the mark than the object.
    nearer = 0
    for image in result.record["images"]:
        x, y = image["peak"]["x"], image["peak"]["y"]
        x0, y0, x1, y1 = image["region"]["boxes"][0]
        to_object = np.hypot(x - (x0 + x1) / 2, y - (y0 + y1) / 2)
        nearer += bool(np.hypot(x - MARK / 2, y - MARK / 2) < to_object)
    assert nearer >= N_IMAGES // 2, nearer


def test_baseline_detects_drift_between_models_and_none_against_itself(world):
    drift = {"max_map_drift": 0.5}
    before = _audit(world, world.marked, "good", "baseline_good", thresholds={},
                    mean_thresholds={})
    baseline = world.folder / "baseline_good" / "audit.json"
    itself = _audit(world, world.marked, "good", "baseline_self", thresholds=drift,
                    mean_thresholds={}, baseline=baseline)
    retrained = _audit(world, world.marked, "shortcut", "baseline_shortcut", thresholds=drift,
                       mean_thresholds={}, baseline=baseline)
    assert before.passed and before.record["baseline"] is None
    # Against itself: the same maps, exactly.
    assert itself.passed, _summary(itself)
    assert set(_statuses(itself, "max_map_drift")) == {"pass"}
    for image in itself.record["images"]:
        comparison = image["baseline"]
        assert comparison["found"] and comparison["same_image"]
        assert comparison["map_drift"] == 0.0 and comparison["map_iou_top20"] == 1.0
        assert comparison["map_correlation"] == pytest.approx(1.0)
        assert comparison["probability_change"] == pytest.approx(0.0, abs=1e-6)
        assert not comparison["top1_changed"]
    assert itself.record["aggregates"]["map_drift"]["mean"] == 0.0
    assert itself.record["baseline"]["same_manifest"]
    assert itself.record["baseline"]["matched"] == N_IMAGES
    # Against the shortcut model: just as accurate, but the maps moved to the corner.
    _print_metric("shortcut vs good baseline", retrained, "map_drift")
    assert retrained.record["aggregates"]["top1"]["mean"] == 1.0
    statuses = _statuses(retrained, "max_map_drift")
    assert statuses.count("fail") >= N_IMAGES // 2, statuses
    assert not retrained.passed and int(retrained.exit_status) == 1
    assert retrained.record["aggregates"]["map_drift"]["mean"] > 0.5


def test_baseline_of_another_precision_is_refused_unless_allowed(world):
    from camcli.api import Explainer
    from camcli.errors import UsageError

    before = _audit(world, world.clean, "good", "precision_f32", thresholds={},
                    mean_thresholds={})
    baseline = world.folder / "precision_f32" / "audit.json"
    assert before.record["model"]["precision"] == "float32"
    world.bf16 = Explainer(model=str(world.paths["good"]), preprocess="scale01",
                           labels=world.labels, batch_size=4, precision="bfloat16")
    assert world.bf16.loaded.model.get_layer("features").compute_dtype == "bfloat16"
    with pytest.raises(UsageError, match="--precision float32, this audit runs at bfloat16; "
                                         "pass --allow-precision-change"):
        _audit(world, world.clean, "bf16", "precision_refused", baseline=baseline)
    assert not (world.folder / "precision_refused").exists()  # refused before any output
    allowed = _audit(world, world.clean, "bf16", "precision_allowed", thresholds={},
                     mean_thresholds={}, baseline=baseline, allow_precision_change=True)
    assert allowed.record["model"]["precision"] == "bfloat16"
    correlations = [image["baseline"]["map_correlation"] for image in allowed.record["images"]]
    print(f"\nbfloat16 vs float32 audit maps: correlation {np.round(correlations, 6).tolist()}")
    assert min(correlations) >= 0.95
    assert not any(image["baseline"]["top1_changed"] for image in allowed.record["images"])


def test_per_row_thresholds_override_and_switch_off_global_ones(world):
    rows = world.moved.read_text().splitlines()
    header, body = rows[0], rows[1:]
    lines = [header + ",min_top1,min_energy_in_box"]
    lines += [row + ",off," for row in body[:-1]] + [body[-1] + ",,0.99"]
    manifest = world.data / "moved_overrides.csv"
    manifest.write_text("\n".join(lines) + "\n")
    result = _audit(world, manifest, "good", "overrides_out", mean_thresholds={})
    energy = _checks(result, "min_energy_in_box")
    assert len(energy) == 1 and energy[0]["source"] == "row" and energy[0]["threshold"] == 0.99
    assert energy[0]["status"] == "fail"
    top1 = _checks(result, "min_top1")
    assert len(top1) == 1 and top1[0]["source"] == "global"  # only the last row keeps it
    assert not result.passed


def test_expected_class_maps_masks_and_rows_without_ground_truth(world):
    """The map is the expected class's even when the model predicts another; a mask equal to
    the box gives the box's numbers; a row with neither class nor box still gets the rest."""
    from camcli.engine import Engine, Targets

    clean = world.data / "clean"
    rows = world.clean.read_text().splitlines()[1:4]
    paths = [row.split(",")[0] for row in rows]
    labels = [NAMES.index(row.split(",")[1]) for row in rows]
    box = [int(v) for v in rows[1].split('"')[1].split(",")]
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[box[1]:box[3], box[0]:box[2]] = 1  # a 0/1 mask
    Image.fromarray(mask).save(clean / "mask1.png")
    wrong = (labels[0] + 1) % CLASSES
    manifest = world.data / "mixed.jsonl"
    manifest.write_text("\n".join(json.dumps(row) for row in (
        {"path": paths[0], "expected": wrong, "id": "wrong-class"},
        {"path": paths[1], "expected": NAMES[labels[1]], "mask": "clean/mask1.png",
         "id": "mask"},
        {"path": paths[1], "expected": NAMES[labels[1]], "bbox": box, "id": "box"},
        {"path": paths[2], "id": "bare"},
    )) + "\n")
    result = _audit(world, manifest, "good", "mixed_out", thresholds={"min_top1": 1,
                    "min_energy_in_box": 0.0}, mean_thresholds={})
    images = {image["id"]: image for image in result.record["images"]}

    mispredicted = images["wrong-class"]
    assert mispredicted["predictions"][0]["index"] == labels[0]
    assert mispredicted["explained"]["index"] == wrong
    assert mispredicted["explained"]["reason"] == "expected"
    assert mispredicted["metrics"]["top1"] == 0
    pixels = np.asarray(Image.open(clean / Path(paths[0]).name))[None]
    reference = Engine(world.good.loaded, Targets(classes=(wrong,))).run(pixels / 255.0)
    np.testing.assert_allclose(np.asarray(mispredicted["map"]["values"]), reference.cams[0, 0],
                               atol=2e-4)

    assert images["mask"]["metrics"] == images["box"]["metrics"]
    assert images["mask"]["region"]["mask"].endswith("mask1.png")

    bare = images["bare"]
    assert bare["explained"]["reason"] == "top-1" and bare["expected"] is None
    assert bare["metrics"]["top1"] is None and bare["metrics"]["energy_in_box"] is None
    assert bare["metrics"]["deletion_auc"] is not None
    assert [c["status"] for c in bare["checks"]] == ["skip", "skip"]
    assert [c["status"] for c in mispredicted["checks"]] == ["fail", "skip"]
    assert result.record["summary"]["skipped_checks"] == 3


# --------------------------------------------------------------------------- report.html


def test_report_html_renders_one_card_per_image_in_chromium(world, clean_audit, chromium,
                                                            tmp_path):
    # A failing audit with an unreadable image too: every row gets a card.
    manifest = world.data / "with_missing.csv"
    manifest.write_text(world.moved.read_text() + 'moved/absent.png,ring,"1,1,9,9"\n')
    result = _audit(world, manifest, "good", "html_out")
    assert result.record["summary"]["unreadable_images"] == 1
    page = result.files["report.html"]
    dom = run_once(chromium, page, tmp_path / "profile1", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert html.count('class="card pass') + html.count('class="card fail') == N_IMAGES + 1
    assert html.count('class="card fail') == result.record["summary"]["failed_images"]
    # The inline script ran: the cards were re-ordered by the default sort (failures first).
    first_card = html.index('class="card ')
    assert html[first_card:first_card + 20].startswith('class="card fail')

    shot = tmp_path / "report.png"
    run = run_once(chromium, page, tmp_path / "profile2", f"--screenshot={shot}",
                    "--window-size=1200,900")
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    with Image.open(shot) as image:
        assert image.size == (1200, 900)
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert pixels.std() > 20, "the screenshot is blank"
    # Thumbnails are inline: the page needs no other file (overlays are only linked).
    assert "data:image/jpeg;base64," in page.read_text()


# --------------------------------------------------------------------------- the command


def _env(folder: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("https_proxy", "http_proxy", "HTTPS_PROXY", "HTTP_PROXY"):
        env[name] = "http://127.0.0.1:9"  # nothing may be downloaded
    env["KERAS_HOME"] = str(folder / "keras_home")
    env.pop("GITHUB_STEP_SUMMARY", None)
    env.update(extra)
    return env


def _camcli_all(*commands, cwd: Path) -> list[subprocess.CompletedProcess]:
    """Start several ``camcli`` commands at once (each start-up costs seconds); wait for all."""
    assert CAMCLI.exists(), f"the camcli entry point is not installed at {CAMCLI}"
    running = [
        (args, subprocess.Popen([str(CAMCLI), *map(str, args)], cwd=cwd, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        for args, env in commands
    ]
    results = []
    for args, process in running:
        stdout, stderr = process.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(args, process.returncode, stdout, stderr))
    return results


def test_command_exit_codes_messages_and_step_summary(world):
    folder = world.folder / "cli"
    folder.mkdir()
    step_summary = folder / "step_summary.md"
    step_summary.write_text("# earlier step\n")
    broken = world.data / "broken.csv"
    broken.write_text('path,expected,bbox\nclean/img0.png,ring,"1,2,3,4"\n'
                      'clean/img1.png,cross,"1,2,3"\n')
    unknown = world.data / "unknown_class.csv"
    unknown.write_text('path,expected\nclean/img0.png,ring\nclean/img1.png,hexagon\n')
    model = ["--model", world.paths["good"], "--preprocess", "scale01", "--labels", world.labels]
    thresholds = ["--min-top1", "1"]
    for name, value in MEANS.items():
        thresholds += ["--mean", f"{name}={value}"]
    passing, failing, malformed, bad_class = _camcli_all(
        (["audit", world.clean, *model, *thresholds, "--out", folder / "pass", "--steps", "5"],
         _env(folder, GITHUB_STEP_SUMMARY=str(step_summary))),
        (["audit", world.moved, *model, *thresholds, "--out", folder / "fail", "--steps", "5"],
         _env(folder)),
        (["audit", broken, *model, "--out", folder / "broken"], _env(folder)),
        (["audit", unknown, *model, "--out", folder / "unknown"], _env(folder)),
        cwd=folder,
    )
    assert passing.returncode == 0, passing.stderr
    assert "camcli: audit passed" in passing.stderr and "Traceback" not in passing.stderr
    assert "## camcli audit" in passing.stdout  # summary.md, for the CI log
    summary_text = step_summary.read_text()
    assert summary_text.startswith("# earlier step\n## camcli audit — ✅ passed")
    assert (folder / "pass" / "report.html").is_file()
    assert json.loads((folder / "pass" / "audit.json").read_text())["settings"]["steps"] == 5

    assert failing.returncode == 1, failing.stderr
    assert "camcli: audit FAILED" in failing.stderr and "min_energy_in_box" in failing.stdout

    for run, fragment in ((malformed, f"manifest {broken}:3: bad bbox"),
                          (bad_class, f"manifest {unknown}:3: expected: unknown class 'hexagon'")):
        lines = [line for line in run.stderr.splitlines() if line.strip()]
        assert run.returncode == 2, run.stderr
        assert len(lines) == 1 and lines[0].startswith("camcli: error: "), run.stderr
        assert fragment in lines[0]
        assert run.stdout == ""
    assert not (folder / "broken").exists() and not (folder / "unknown").exists()


def test_an_input_resolution_method_is_audited_like_a_layer_method(world, clean_audit):
    # The audit with --method guided-gradcam: its maps are at the model's input size (64x64,
    # not the layer's 8x8); the metrics, overlays and a comparison with the Grad-CAM audit as
    # baseline (maps of another size) work as for any method.
    from camcli.api import Explainer

    explainer = Explainer(model=str(world.paths["good"]), preprocess="scale01",
                          labels=world.labels, batch_size=4, method="guided-gradcam")
    result = run_audit(world.clean, explainer, AuditSettings(
        out_dir=world.folder / "guided_out", step_summary=False, thresholds=THRESHOLDS,
        mean_thresholds=MEANS, baseline=world.folder / "clean_out" / "audit.json"))
    _print_metric("guided-gradcam, clean images", result, "energy_in_box")
    assert result.passed, _summary(result)
    assert result.record["method"] == "guided-gradcam"
    pairs = zip(result.record["images"], clean_audit.record["images"], strict=True)
    for image, before in pairs:
        assert (image["map"]["height"], image["map"]["width"]) == (SIZE, SIZE)
        assert before["map"]["height"] < SIZE
        assert image["baseline"]["found"] and image["baseline"]["map_correlation"] > 0.3
        with Image.open(world.folder / "guided_out" / image["overlay"]) as overlay:
            assert overlay.size == (SIZE, SIZE)
