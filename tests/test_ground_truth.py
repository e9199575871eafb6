"""Ground truth: on a task where we know what decides the class, Grad-CAM must point at it.

A small CNN is trained once per session (``shapes_cnn`` in conftest.py, in seconds) on synthetic
images (tests/synthetic.py) whose class is decided by one bright object — square, cross or
ring — at a random place on a textured background with distractor blobs. camcli's engine then
explains held-out images, and the peak of each map (camcli.heatmaps.map_stats, in input pixels)
must fall on the object's bounding box.
"""

from __future__ import annotations

import numpy as np
import pytest
from synthetic import point_in_box

from camcli.engine import Engine, Targets
from camcli.heatmaps import map_stats

SIZE = 64
CLASSES = 3
FEATURE_CELLS = 8  # the explained layer is 8x8
MARGIN = SIZE / FEATURE_CELLS / 2  # half a feature cell, in pixels
MIN_POINTING = 0.9


@pytest.fixture(scope="module")
def trained(shapes_cnn):
    """The CNN trained once per session in conftest.py (same architecture, data and schedule)."""
    assert (shapes_cnn.size, shapes_cnn.classes) == (SIZE, CLASSES)
    return shapes_cnn.model, shapes_cnn.held_out


@pytest.fixture(scope="module")
def explained(trained, make_loaded):
    """Top-1 maps and maps for every class, for all held-out images."""
    model, held_out = trained
    loaded = make_loaded(model, "features", name="shapes_cnn")
    assert loaded.layer.output.shape[1:3] == (FEATURE_CELLS, FEATURE_CELLS)
    top1 = Engine(loaded, Targets()).run(held_out.images)
    every = Engine(loaded, Targets(classes=tuple(range(CLASSES)))).run(held_out.images)
    return held_out, top1, every


def _pointing_rate(cams: np.ndarray, boxes: np.ndarray) -> float:
    hits = [point_in_box(map_stats(cam, SIZE, SIZE).peak, box, MARGIN)
            for cam, box in zip(cams, boxes, strict=True)]
    return float(np.mean(hits))


def test_classifier_learned_the_task(explained):
    held_out, top1, _ = explained
    accuracy = float(np.mean(top1.targets[:, 0] == held_out.labels))
    print(f"\nheld-out accuracy: {accuracy:.3f} on {len(held_out)} images")
    assert accuracy >= 0.9, f"the test model did not learn the task (accuracy {accuracy:.3f})"


def test_gradcam_peak_falls_on_the_object(explained):
    held_out, top1, _ = explained
    assert len(held_out) >= 100
    assert not top1.empty.any()
    rate = _pointing_rate(top1.cams[:, 0], held_out.boxes)
    print(f"\nGrad-CAM top-1 pointing rate: {rate:.3f} on {len(held_out)} held-out images")
    assert rate >= MIN_POINTING, f"peak on the object for only {rate:.1%} of held-out images"


def test_gradcam_for_the_true_class_points_at_the_object(explained):
    held_out, _, every = explained
    cams = every.cams[np.arange(len(held_out)), held_out.labels]
    rate = _pointing_rate(cams, held_out.boxes)
    print(f"\nGrad-CAM true-class pointing rate: {rate:.3f}")
    assert rate >= MIN_POINTING, f"peak on the object for only {rate:.1%} of held-out images"


def test_pointing_criterion_rejects_maps_of_other_images(explained):
    # Control: the same criterion applied to another image's map (object elsewhere) must
    # mostly fail, or the pointing test above could not tell a good map from a bad one.
    held_out, top1, _ = explained
    rate = _pointing_rate(np.roll(top1.cams[:, 0], 1, axis=0), held_out.boxes)
    print(f"\npointing rate with mismatched maps: {rate:.3f}")
    assert rate < 0.4, f"mismatched maps still 'point' at the object {rate:.1%} of the time"
