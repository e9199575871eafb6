"""Backward passes beyond the plain gradient, for the engine: guided ReLUs (guided
backpropagation), every bias layer's pre-activation output (FullGrad) and the ReST score
(ShapleyCAM).

Everything acts on the user's model only while camcli calls it, through the same temporary
attribute patches as the softmax bypass (:func:`camcli.loading.patched`): after the call the
model is exactly as it was, and nothing global (TensorFlow's gradient registry) changes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import keras
import tensorflow as tf

from camcli.loading import Patch, patched

#: Activation functions that are not element-wise (or not non-linear): never guided.
_NOT_GUIDED = (keras.activations.linear, keras.activations.softmax, keras.activations.log_softmax)


def _sublayers(model):
    """Every layer inside ``model``, nested models and layers' own sublayers included."""
    return list(model._flatten_layers(include_self=False, recursive=True))


def _guided(function):
    """``function`` (element-wise) whose backward pass lets only positive gradients through,
    times its own derivative: for ReLU, Springenberg et al.'s rule (positive gradient where the
    input was positive); for smooth activations (swish, gelu, ...) the same rule with their
    derivative."""

    @tf.custom_gradient
    def guided(x):
        def backward(upstream):
            with tf.GradientTape() as tape:
                tape.watch(x)
                again = function(x)
            return tape.gradient(again, x, output_gradients=tf.nn.relu(upstream))

        return function(x), backward

    return guided


def guided_patches(model) -> tuple[Patch, ...]:
    """Patches that guide every activation of ``model``: ``ReLU``/``LeakyReLU`` layers, and
    the ``activation`` of ``Activation``, convolution and dense layers (ReLU, ReLU6 and any
    other element-wise function; linear and softmax are left alone). Ops called directly in a
    graph (``keras.ops.relu`` in a functional model) are not layers and keep their gradient."""
    patches = []
    for layer in _sublayers(model):
        if isinstance(layer, (keras.layers.ReLU, keras.layers.LeakyReLU)):
            patches.append(Patch(layer, "call", _guided(layer.call)))
        elif callable(getattr(layer, "activation", None)) and not any(
            layer.activation is f for f in _NOT_GUIDED
        ):
            patches.append(Patch(layer, "activation", _guided(layer.activation)))
    return tuple(patches)


@dataclass
class _BiasCapture:
    """One bias layer's pre-activation output (watched) and its effective bias (channels,)."""

    layer: object
    output: object = None

    def bias(self):
        layer = self.layer
        if isinstance(layer, keras.layers.BatchNormalization):
            # Inference: gamma (x - mean) / sqrt(var + eps) + beta = scale x + bias.
            gamma = layer.gamma if layer.scale else 1.0
            beta = layer.beta if layer.center else 0.0
            return beta - gamma * layer.moving_mean / tf.sqrt(layer.moving_variance + layer.epsilon)
        return layer.bias


def _has_bias(layer) -> bool:
    if isinstance(layer, keras.layers.BatchNormalization):
        return layer.axis in (-1, 3)  # channels last
    return (bool(getattr(layer, "use_bias", False)) and callable(getattr(layer, "activation", None))
            and getattr(layer, "data_format", "channels_last") == "channels_last")


def bias_layers(model) -> list[_BiasCapture]:
    """FullGrad's candidate layers: every layer with a bias added before its activation
    (convolutions, dense) and batch norms, nested ones too. Only those whose output is 4-D
    (a spatial map) count: the others' capture stays empty (:func:`capturing_biases`)."""
    return [_BiasCapture(layer) for layer in _sublayers(model) if _has_bias(layer)]


@contextlib.contextmanager
def capturing_biases(captures: list[_BiasCapture], tape):
    """Record each bias layer's pre-activation output, watched by ``tape``, during a call:
    a convolution's output before its ``activation``, a batch norm's output."""
    patches = []
    for capture in captures:
        layer = capture.layer

        def record(value, capture=capture):
            if value.shape.rank == 4:  # a spatial map (a layer called twice: its last call)
                tape.watch(value)
                capture.output = value
            return value

        if isinstance(layer, keras.layers.BatchNormalization):
            call = layer.call
            patches.append(Patch(layer, "call", lambda *a, f=call, r=record, **k: r(f(*a, **k))))
        else:
            activation = layer.activation
            patches.append(Patch(layer, "activation", lambda x, f=activation, r=record: f(r(x))))
    with patched(tuple(patches)):
        yield


def rest_score(logits, targets, probability: str):
    """ShapleyCAM's ReST score per image and target: ``y_c + log p_c`` (Cai et al. 2025), the
    logit plus its log-probability (softmax, or sigmoid for sigmoid heads)."""
    log_p = tf.math.log_sigmoid(logits) if probability == "sigmoid" else tf.nn.log_softmax(logits)
    return tf.gather(logits + log_p, targets, batch_dims=1)


class Watchers:
    """Several tapes watching the same tensors (nested tapes for second derivatives)."""

    def __init__(self, *tapes):
        self.tapes = tapes

    def watch(self, value):
        for tape in self.tapes:
            tape.watch(value)
