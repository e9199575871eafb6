"""The real pretrained MobileNet v1 0.25 (fixture weights) on the sample photos, through the CLI.

The fixture and its observed top-5 lists are documented in ../shared/fixtures/SOURCES.md. camcli
feeds the whole image resized to the input size (bilinear, no crop), the setting those lists
were observed with, so the top-5 must come out in the same order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
WEIGHTS = FIXTURES / "mobilenet_v1_0.25_224_imagenet.weights.h5"
CAMCLI = Path(sys.executable).with_name("camcli")
MODEL = "mobilenet_v1_0.25_224"

# SOURCES.md, "Observed top-5", whole image resized to 224x224, no crop.
DOCUMENTED_TOP5 = {
    "chelsea.png": [(285, 0.355), (287, 0.221), (281, 0.145), (282, 0.124), (335, 0.037)],
    "coffee.png": [(967, 0.930), (968, 0.013), (504, 0.006), (633, 0.005), (999, 0.004)],
}


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    if not WEIGHTS.is_file():
        pytest.skip(f"fixture weights not found at {WEIGHTS}")
    out = tmp_path_factory.mktemp("real") / "out"
    env = dict(os.environ)
    for name in ("https_proxy", "http_proxy", "HTTPS_PROXY", "HTTP_PROXY"):
        env[name] = "http://127.0.0.1:9"  # nothing may be downloaded
    for name in ("no_proxy", "NO_PROXY"):
        env.pop(name, None)
    env["KERAS_HOME"] = str(out.parent / "keras_home")
    run = subprocess.run(
        [
            str(CAMCLI),
            "explain",
            "sample_images/",
            "--model",
            MODEL,
            "--weights",
            str(WEIGHTS),
            "--out-dir",
            str(out),
            "--save-heatmap",
            "--json",
            "-q",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    results = {Path(line["input"]["path"]).name: line for line in lines}
    return out / "sample_images", results


def _top5(record: dict) -> list[int]:
    return [p["index"] for p in record["predictions"]]


def test_every_sample_photo_is_explained_under_out_dir(sample_run):
    mirror, results = sample_run
    assert set(results) == {"astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"}
    for name, result in results.items():
        assert result["ok"] is True
        assert result["model"]["weights"] == str(WEIGHTS)
        assert result["model"]["layer"] == "conv_pw_13_relu"
        record = json.loads((mirror / f"{name}.cam.json").read_text())
        assert record["predictions"] == result["predictions"]
        with (
            Image.open(mirror / f"{name}.cam.png") as overlay,
            Image.open(REPO / "sample_images" / name) as photo,
        ):
            assert overlay.size == photo.size


def test_the_cat_and_the_coffee_are_recognised(sample_run):
    _, results = sample_run
    assert set(_top5(results["chelsea.png"])) & {281, 282, 283, 284, 285}
    assert set(_top5(results["coffee.png"])) & {967, 968}
    assert results["coffee.png"]["predictions"][0]["label"] == "espresso"


@pytest.mark.parametrize("name", sorted(DOCUMENTED_TOP5))
def test_top5_matches_the_fixture_documentation(sample_run, name):
    _, results = sample_run
    predictions = results[name]["predictions"]
    assert _top5(results[name]) == [index for index, _ in DOCUMENTED_TOP5[name]]
    for got, (_, documented) in zip(predictions, DOCUMENTED_TOP5[name], strict=True):
        assert got["probability"] == pytest.approx(documented, abs=0.002)


def test_coffee_heatmap_peaks_on_the_cup(sample_run):
    mirror, results = sample_run
    (explained,) = results["coffee.png"]["explanations"]
    assert explained["index"] == 967 and not explained["empty"]
    peak = explained["peak"]
    assert 170 <= peak["x"] <= 415 and 15 <= peak["y"] <= 310, peak

    cam = np.load(mirror / explained["heatmap"])
    assert cam.shape == (7, 7) and cam.dtype == np.float32
    assert cam.min() >= 0.0 and cam.max() == pytest.approx(1.0)
    # the saved map and the record agree on where the peak is (cell centre, input pixels)
    i, j = np.unravel_index(int(np.argmax(cam)), cam.shape)
    assert peak == {"x": round((j + 0.5) * 600 / 7, 2), "y": round((i + 0.5) * 400 / 7, 2)}
