"""The transformer ground truth: a small keras-hub ViT trained on synthetic scenes
(tests/synthetic.py) and how often each method's peak falls on the class object, per block.

Used by the ``shapes_vit`` fixtures (tests/conftest.py) and by
``python tests/vit_ground_truth.py``, which prints the README's table.
"""

from __future__ import annotations

import numpy as np
from synthetic import make_shapes, point_in_box

SIZE, PATCH, CLASSES, BLOCKS = 48, 8, 2, 3
OBJECT_SIDE = (10, 16)
GRADIENT_METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam")
ATTENTION_METHODS = ("rollout", "grad-rollout", "legrad")


def train(path, seed: int = 0):
    """Train the ViT and save it as ``path`` (.keras); returns the held-out scenes."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    scenes = make_shapes(1000, seed=100, size=SIZE, classes=CLASSES, object_side=OBJECT_SIDE)
    held_out = make_shapes(100, seed=999, size=SIZE, classes=CLASSES, object_side=OBJECT_SIDE)
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(SIZE, SIZE, 3), patch_size=PATCH, num_layers=BLOCKS, num_heads=2,
        hidden_dim=32, mlp_dim=64,
    )
    model = keras_hub.models.ViTImageClassifier(backbone=backbone, num_classes=CLASSES,
                                                preprocessor=None)
    epochs, batch_size = 12, 32
    steps = epochs * -(-len(scenes) // batch_size)
    model.compile(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(3e-3, steps)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True,
    )
    model.fit(scenes.images, scenes.labels, batch_size=batch_size, epochs=epochs, verbose=0)
    model.save(str(path))
    return held_out


def pointing(cams: np.ndarray, boxes: np.ndarray) -> float:
    """The share of maps whose peak cell's centre lies in the object's box grown by a patch."""
    hits = []
    for cam, box in zip(cams, boxes, strict=True):
        i, j = np.unravel_index(np.argmax(cam), cam.shape)
        cell = SIZE / cam.shape[0]
        hits.append(point_in_box(((j + 0.5) * cell, (i + 0.5) * cell), box, margin=PATCH))
    return float(np.mean(hits))


def table(path, held_out) -> dict:
    """{(method, layer): pointing rate} for top-1 maps; attention methods use every layer."""
    from camcli import loading
    from camcli.engine import Engine, Targets

    rates = {}
    layers = [f"transformer_block_{b}/ln_1" for b in range(1, BLOCKS + 1)]
    layers.append("vit_encoder/ln")  # the encoder's output: no gradient to the patch tokens
    for layer in layers:
        loaded = loading.load(str(path), layer=layer)
        for method in GRADIENT_METHODS:
            # eager: on this tiny model tracing would cost more than it saves
            engine = Engine(loaded, Targets(), method, compiled=False)
            cams = engine.run(held_out.images).cams[:, 0]
            rates[(method, layer)] = pointing(cams, held_out.boxes)
    loaded = loading.load(str(path))
    for method in ATTENTION_METHODS:
        output = Engine(loaded, Targets(), method, compiled=False).run(held_out.images)
        rates[(method, "all")] = pointing(output.cams[:, 0], held_out.boxes)
    rates[("accuracy", "")] = float(np.mean(output.targets[:, 0] == held_out.labels))
    return rates


def markdown(rates: dict) -> str:
    layers = sorted({layer for (m, layer) in rates if m in GRADIENT_METHODS})
    lines = ["| method | " + " | ".join(f"`{layer}`" for layer in layers) + " |",
             "| --- |" + " ---: |" * len(layers)]
    for method in GRADIENT_METHODS:
        cells = [f"{rates[(method, layer)]:.0%}" for layer in layers]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    for method in ATTENTION_METHODS:
        lines.append(f"| {method} (all layers) | {rates[(method, 'all')]:.0%} |"
                     + " |" * (len(layers) - 1))
    return "\n".join(lines) + f"\n\nheld-out accuracy: {rates[('accuracy', '')]:.0%}"


if __name__ == "__main__":
    import sys
    import tempfile
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "vit.keras"
        print(markdown(table(path, train(path))))
