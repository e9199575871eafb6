"""Finding the token layers of a transformer (ViT, DeiT, Swin, or any Keras model whose layers
output ``(n, tokens, channels)``), the default one to explain, and its attention layers.

Transformer blocks are usually layers inside layers, not nodes of a functional graph, so their
output shapes are not known symbolically: one probing forward pass on a blank batch records the
shape every layer returns. Each layer whose output is image tokens (a layout :mod:`camcli.adapters`
recognises) is a possible ``--layer``.

The default, when the model has attention blocks, is the last block's *input* (its first layer
normalisation, timm's ``blocks[-1].norm1``): when the head reads the class token, the last
block's output patch tokens receive exactly zero gradient, so gradient methods there give blank
maps. Without attention blocks (Swin's window attention is internal), the last token layer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from camcli.adapters import TokenGrid, token_layout

DEFAULT_REASON = (
    "the last block's input (its first layer norm): the last block's output patch tokens get "
    "no class gradient when the head reads the class token"
)


@dataclass(frozen=True)
class TokenLayer:
    """A layer whose output is image tokens, with the adapter that makes them a grid."""

    path: str
    layer: object
    adapter: TokenGrid

    @property
    def shape(self) -> tuple:
        return self.adapter.shape


def layer_tree(layer, prefix: str = "") -> Iterator[tuple[str, object]]:
    """Every sublayer of ``layer`` (depth first, in creation order) with its path."""
    import keras

    for child in layer._flatten_layers(include_self=False, recursive=False):
        if isinstance(child, keras.layers.InputLayer):
            continue
        path = f"{prefix}{child.name}"
        yield path, child
        yield from layer_tree(child, f"{path}/")


def token_layers(model, input_size: tuple[int, int], channels: int) -> list[TokenLayer]:
    """Every layer whose output is image tokens, in the order the forward pass calls them."""
    import keras

    shapes: dict[int, tuple] = {}
    order: list[int] = []
    tree = list(layer_tree(model))
    with contextlib.ExitStack() as stack:
        for _, layer in tree:
            stack.enter_context(_recording(layer, shapes, order))
        model(np.zeros((1, *input_size, channels), np.float32), training=False)
    found = []
    by_id = {id(layer): (path, layer) for path, layer in tree}
    for key in order:
        shape = shapes[key]
        path, layer = by_id[key]
        if len(shape) != 3 or isinstance(layer, keras.layers.MultiHeadAttention):
            continue
        layout = token_layout(int(shape[1]), int(shape[2]), input_size)
        if layout is not None:
            found.append(TokenLayer(path, layer, layout))
    return found


@contextlib.contextmanager
def _recording(layer, shapes: dict, order: list):
    own = layer.__dict__.get("call")
    original = layer.call

    def call(*args, **kwargs):
        output = original(*args, **kwargs)
        if id(layer) not in shapes and hasattr(output, "shape"):
            shapes[id(layer)] = tuple(output.shape)
            order.append(id(layer))
        return output

    layer.call = call
    try:
        yield
    finally:
        if own is None:
            del layer.call
        else:
            layer.call = own


def attention_blocks(model) -> list[tuple[str, object]]:
    """The layers that directly own a Keras ``MultiHeadAttention`` (transformer blocks)."""
    import keras

    blocks = []
    for path, layer in layer_tree(model):
        children = layer._flatten_layers(include_self=False, recursive=False)
        if any(isinstance(child, keras.layers.MultiHeadAttention) for child in children):
            blocks.append((path, layer))
    return blocks


def attention_layers(model) -> list[tuple[str, object]]:
    """Every ``MultiHeadAttention`` layer, in creation order (the order of the blocks)."""
    import keras

    return [(path, layer) for path, layer in layer_tree(model)
            if isinstance(layer, keras.layers.MultiHeadAttention)]


def default_token_layer(model, layers: list[TokenLayer]) -> tuple[TokenLayer, str] | None:
    """The default target among ``layers`` and why it was chosen (see the module docstring)."""
    import keras

    if not layers:
        return None
    blocks = attention_blocks(model)
    if blocks:
        path, block = blocks[-1]
        norms = [child for child in block._flatten_layers(include_self=False, recursive=False)
                 if isinstance(child, keras.layers.LayerNormalization)]
        for candidate in layers:
            if norms and candidate.layer is norms[0]:
                return candidate, DEFAULT_REASON
    leaves = [c for c in layers if not c.layer._flatten_layers(include_self=False, recursive=False)]
    return (leaves or layers)[-1], "the last layer whose output is image tokens"


def find(layers: list[TokenLayer], path: str) -> list[TokenLayer]:
    """The token layers ``path`` names: the full path, or a unique tail of it
    ("transformer_block_2/ln_1", "ln")."""
    exact = [c for c in layers if c.path == path]
    return exact or [c for c in layers if c.path.endswith(f"/{path}")]


def explicit_attention(layer):
    """A ``_compute_attention`` for ``layer`` (a Keras ``MultiHeadAttention``) that always takes
    the explicit path, whose ``_softmax`` sublayer computes the probabilities camcli captures
    (the fused ``dot_product_attention`` path never exposes them). Same arithmetic otherwise."""
    import inspect

    original = layer._compute_attention
    signature = inspect.signature(original)

    def compute(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.arguments["return_attention_scores"] = True
        return original(*bound.args, **bound.kwargs)

    return compute
