"""Every class-discriminative method on a real ImageNet CNN: a cat on one side, an espresso on
the other; explaining "Egyptian cat" and "espresso" must put each map on its own side.

MobileNetV2 1.0 with the real weights of ``../shared/fixtures`` (SOURCES.md: Egyptian cat 0.82
on chelsea, espresso 0.98 on coffee), one model, one batch: the composite and its mirror image
(the cat on the right), so a method that favours one side of the frame cannot pass by chance.
The bundled MobileNet v1 0.25 separates the two too weakly for Grad-CAM++ and LayerCAM (their
cat map leaves half its mass on the coffee's side), so it is not used here. Measured shares of
each map on its object's side (4 maps): 0.77-0.93 for the Grad-CAM family, 0.61-0.68 for
Grad-CAM++ and LayerCAM, 0.58-0.63 for FullGrad, 0.82-0.97 for ShapleyCAM and guided Grad-CAM.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_method_family import LIGHT

from camcli.engine import Engine, Targets
from camcli.methods import METHODS, get_method

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO.parent / "shared" / "fixtures" / "mobilenet_v2_1.0_224_imagenet.weights.h5"
EGYPTIAN_CAT, ESPRESSO = 285, 967
#: Score-CAM over the 32 channels of most variance, not all 1280 (its variants: LIGHT's 16).
CHANNELS = 32
#: Class-discriminative CNN methods (the attention methods need a transformer: tests/test_hub.py).
DISCRIMINATIVE = [name for name, method in METHODS.items()
                  if method.class_discriminative and not method.needs_attention]


def composite() -> np.ndarray:
    """224 x 224, mid-grey: a square crop of chelsea.png (the cat, centred) at the left, a
    square crop of coffee.png around the cup (test_real_weights.py: x 170-415, y 15-310) at the
    right, each 112 x 112 and vertically centred."""
    out = Image.new("RGB", (224, 224), (128, 128, 128))
    with Image.open(REPO / "sample_images" / "chelsea.png") as cat:
        width, height = cat.size
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        square = cat.convert("RGB").crop((left, top, left + side, top + side))
        out.paste(square.resize((112, 112), Image.Resampling.BILINEAR), (0, 56))
    with Image.open(REPO / "sample_images" / "coffee.png") as coffee:
        square = coffee.convert("RGB").crop((142, 12, 442, 312))
        out.paste(square.resize((112, 112), Image.Resampling.BILINEAR), (112, 56))
    return np.asarray(out)


@pytest.fixture(scope="module")
def mobilenet_v2():
    from camcli.loading import load

    loaded = load("mobilenet_v2", weights=str(WEIGHTS))
    pixels = composite()
    batch = np.stack([pixels, pixels[:, ::-1]])  # the cat on the left, then on the right
    return loaded, loaded.preprocess(batch.astype(np.float32))


def test_the_model_sees_both_objects_in_the_composite(mobilenet_v2):
    # Egyptian cat is the top class; espresso among the ten best (measured: 4th and 6th).
    loaded, batch = mobilenet_v2
    out = Engine(loaded, Targets(), "gradcam", compiled=False).run(batch)
    for logits in out.logits:
        ranks = np.argsort(np.argsort(-logits))  # 0: the best-scoring class
        assert ranks[EGYPTIAN_CAT] == 0 and ranks[ESPRESSO] < 10, ranks[[EGYPTIAN_CAT, ESPRESSO]]


@pytest.mark.parametrize("name", DISCRIMINATIVE)
def test_each_class_map_lies_on_its_own_side(mobilenet_v2, name):
    loaded, batch = mobilenet_v2
    # Score-CAM's variants as light as in the ground-truth test (their defaults swamp inputs).
    method = get_method(name, **{"channels": CHANNELS, **LIGHT.get(name, {})})
    out = Engine(loaded, Targets(classes=(EGYPTIAN_CAT, ESPRESSO)), method, compiled=False).run(
        batch)
    assert not out.empty.any()
    shares = np.zeros((2, 2))
    for image in range(2):
        for j, cls in enumerate((EGYPTIAN_CAT, ESPRESSO)):
            columns = out.cams[image, j].sum(axis=0)
            centres = (np.arange(len(columns)) + 0.5) / len(columns)
            weight = np.where(centres < 0.5, 1.0, np.where(centres > 0.5, 0.0, 0.5))  # odd: halved
            left = (columns * weight).sum() / columns.sum()
            on_left = (cls == EGYPTIAN_CAT) == (image == 0)
            shares[image, j] = left if on_left else 1.0 - left
    # Each class's map keeps most of its mass on the side where that object is.
    assert (shares > 0.5).all(), f"{name}: share of each map on its object's side {shares}"
