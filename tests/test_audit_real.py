"""Deletion / insertion on a real pretrained model: MobileNet v1 0.25 (the ImageNet weights
bundled in camcli/data, see its NOTICE.md) on the coffee sample photo.

A faithful map ranks the pixels the model relies on first: deleting them first makes the score
fall sooner (lower deletion AUC), inserting them first makes it rise sooner (higher insertion
AUC) than a random ranking does. Grad-CAM must beat the mean of 5 random maps on both, with the
audit's own protocol (blurred baseline, 20 steps, softmax probability of the class).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from camcli import images
from camcli.audit import AuditSettings, faithfulness, metrics, run_audit
from camcli.heatmaps import resize

REPO = Path(__file__).resolve().parents[1]
COFFEE = REPO / "sample_images" / "coffee.png"
ESPRESSO = 967
RANDOM_MAPS = 5


@pytest.fixture(scope="module")
def coffee():
    from camcli.api import Explainer

    explainer = Explainer(model="mobilenet_v1_0.25_224", weights="imagenet")  # bundled
    pixels = images.read_for_model(COFFEE, explainer.loaded.input_size).pixels
    out = explainer.explain_arrays(pixels[None])
    assert int(out.targets[0, 0]) == ESPRESSO, "the bundled model no longer sees an espresso"
    return explainer, pixels, out.cams[0, 0]


def _score(explainer):
    def score(batch: np.ndarray) -> np.ndarray:
        return np.stack([explainer.loaded.probabilities(s) for s in explainer.predict(batch)])

    return score


def test_gradcam_beats_random_maps_on_deletion_and_insertion(coffee):
    explainer, pixels, cam = coffee
    height, width = explainer.loaded.input_size
    protocol = faithfulness.Protocol(
        steps=20, blur_sigma=metrics.scaled_to_input(metrics.BLUR_SIGMA_AT_224, (height, width))
    )
    gradcam = faithfulness.measure(_score(explainer), pixels[None],
                                   resize(cam, width, height)[None], np.array([ESPRESSO]),
                                   protocol)
    rng = np.random.default_rng(0)
    # Random maps at the same 7×7 resolution, upsampled the same way: only the ranking differs.
    random_maps = np.stack([resize(rng.random(cam.shape).astype(np.float32), width, height)
                            for _ in range(RANDOM_MAPS)])
    random = faithfulness.measure(_score(explainer), np.repeat(pixels[None], RANDOM_MAPS, 0),
                                  random_maps, np.full(RANDOM_MAPS, ESPRESSO), protocol)
    print(f"\ncoffee, espresso: Grad-CAM deletion {gradcam.deletion_auc[0]:.3f} / insertion "
          f"{gradcam.insertion_auc[0]:.3f}; random maps (mean of {RANDOM_MAPS}): deletion "
          f"{random.deletion_auc.mean():.3f} / insertion {random.insertion_auc.mean():.3f}")
    assert gradcam.original[0] == pytest.approx(0.93, abs=0.01)  # SOURCES.md: espresso 0.930
    assert gradcam.deletion_auc[0] < random.deletion_auc.mean()
    assert gradcam.insertion_auc[0] > random.insertion_auc.mean()


def test_the_audit_reports_the_same_numbers_as_the_protocol(coffee, tmp_path):
    explainer, pixels, cam = coffee
    manifest = tmp_path / "coffee.jsonl"
    manifest.write_text(f'{{"path": "{COFFEE}", "expected": "espresso", '
                        f'"bbox": "150,70,470,330"}}\n')
    result = run_audit(manifest, explainer, AuditSettings(out_dir=tmp_path / "out"))
    image = result.record["images"][0]
    height, width = explainer.loaded.input_size
    direct = faithfulness.measure(
        _score(explainer), pixels[None], resize(cam, width, height)[None], np.array([ESPRESSO]),
        faithfulness.Protocol(steps=20, blur_sigma=10.0),
    )
    assert image["metrics"]["top1"] == 1
    assert image["metrics"]["deletion_auc"] == pytest.approx(direct.deletion_auc[0], abs=1e-5)
    assert image["metrics"]["insertion_auc"] == pytest.approx(direct.insertion_auc[0], abs=1e-5)
    assert image["metrics"]["average_drop"] == pytest.approx(direct.average_drop[0], abs=1e-3)
    faith = result.record["protocol"]["faithfulness"]
    assert faith["steps"] == 20 and faith["baseline"]["sigma_px"] == 10.0
    assert "softmax" in faith["score"]
