"""Shared fixtures. Keep this small: TensorFlow is imported only by the fixtures that need it."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def make_loaded():
    """Factory: wrap a Keras model in a ``LoadedModel`` the engine accepts.

    ``layer`` is a layer path ("name" or "nested/name"); by default the model's last spatial
    layer, as camcli picks it. Inputs are taken as already preprocessed.
    """
    from camcli.labels import generic_labels
    from camcli.loading import LoadedModel, default_layer, resolve_layer

    def build(model, layer: str | None = None, name: str = "test-model"):
        target = resolve_layer(model, layer) if layer else default_layer(model)
        _, height, width, channels = model.input_shape
        return LoadedModel(
            model=model,
            name=name,
            weights="none",
            layer=target.layer,
            layer_path=target.path,
            input_size=(height, width),
            channels=channels,
            preprocess=lambda pixels: pixels,
            preprocess_name="identity",
            labels=generic_labels(int(model.output_shape[-1])),
        )

    return build


@pytest.fixture(scope="session")
def shapes_cnn():
    """A small CNN trained once per session on synthetic shapes (tests/synthetic.py).

    Three classes (square, cross, ring) decided by one bright object at a random place; the
    explained layer ``features`` is 8x8. Returns a namespace with ``model``, ``held_out``
    (200 images the model never saw, seed 999), ``size``, ``classes`` and ``layer``. Shared by
    test_ground_truth.py and test_method_family.py so the suite trains it only once (~15 s).
    """
    from types import SimpleNamespace

    import keras
    from synthetic import make_shapes

    size, classes = 64, 3
    keras.utils.set_random_seed(0)
    train = make_shapes(1500, seed=100, size=size, classes=classes)
    held_out = make_shapes(200, seed=999, size=size, classes=classes)
    inputs = keras.Input((size, size, 3))
    x = inputs
    for i, filters in enumerate((16, 32, 48), start=1):  # conv1 64x64, conv2 32x32, conv3 16x16
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i}")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="features")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(classes, name="logits")(x)
    model = keras.Model(inputs, outputs, name="shapes_cnn")
    epochs, batch_size = 6, 32
    steps = epochs * -(-len(train) // batch_size)
    model.compile(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(3e-3, steps)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(train.images, train.labels, batch_size=batch_size, epochs=epochs, verbose=0)
    return SimpleNamespace(
        model=model, held_out=held_out, size=size, classes=classes, layer="features"
    )
