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
