"""The real pretrained MobileNet v1 0.25 (the weights bundled in camcli/data) on the sample
photos, through the CLI, offline.

The weights and their observed top-5 lists are documented in camcli/data/NOTICE.md and in the
fixture's SOURCES.md. camcli feeds the whole image resized to the input size (bilinear, no crop),
the setting those lists were observed with, so the top-5 must come out in the same order.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import CAMCLI, offline_env
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
MODEL = "mobilenet_v1_0.25_224"

# SOURCES.md, "Observed top-5", whole image resized to 224x224, no crop.
DOCUMENTED_TOP5 = {
    "chelsea.png": [(285, 0.355), (287, 0.221), (281, 0.145), (282, 0.124), (335, 0.037)],
    "coffee.png": [(967, 0.930), (968, 0.013), (504, 0.006), (633, 0.005), (999, 0.004)],
}


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    """``--weights imagenet`` with a dead proxy and an empty Keras cache: the bundled file."""
    home = tmp_path_factory.mktemp("real")
    out = home / "out"
    env = offline_env(home)
    run = subprocess.run(
        [
            str(CAMCLI),
            "explain",
            "sample_images/",
            "--model",
            MODEL,
            "--weights",
            "imagenet",
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
    assert run.stderr == ""  # no download attempt, no warning
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    results = {Path(line["input"]["path"]).name: line for line in lines}
    return out / "sample_images", results, Path(env["KERAS_HOME"])


def test_bundled_weights_never_touch_the_keras_cache(sample_run):
    _, results, keras_home = sample_run
    assert results  # the run did happen
    cache = keras_home / "models"
    assert not cache.exists() or not any(cache.iterdir())


def _top5(record: dict) -> list[int]:
    return [p["index"] for p in record["predictions"]]


def test_every_sample_photo_is_explained_under_out_dir(sample_run):
    mirror, results, _ = sample_run
    assert set(results) == {"astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"}
    for name, result in results.items():
        assert result["ok"] is True
        assert result["model"]["weights"] == "imagenet"
        assert result["model"]["layer"] == "conv_pw_13_relu"
        record = json.loads((mirror / f"{name}.cam.json").read_text())
        assert record["predictions"] == result["predictions"]
        with (
            Image.open(mirror / f"{name}.cam.png") as overlay,
            Image.open(REPO / "sample_images" / name) as photo,
        ):
            assert overlay.size == photo.size


def test_the_cat_and_the_coffee_are_recognised(sample_run):
    _, results, _ = sample_run
    assert set(_top5(results["chelsea.png"])) & {281, 282, 283, 284, 285}
    assert set(_top5(results["coffee.png"])) & {967, 968}
    assert results["coffee.png"]["predictions"][0]["label"] == "espresso"


@pytest.mark.parametrize("name", sorted(DOCUMENTED_TOP5))
def test_top5_matches_the_fixture_documentation(sample_run, name):
    _, results, _ = sample_run
    predictions = results[name]["predictions"]
    assert _top5(results[name]) == [index for index, _ in DOCUMENTED_TOP5[name]]
    for got, (_, documented) in zip(predictions, DOCUMENTED_TOP5[name], strict=True):
        assert got["probability"] == pytest.approx(documented, abs=0.002)


def test_coffee_heatmap_peaks_on_the_cup(sample_run):
    mirror, results, _ = sample_run
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
