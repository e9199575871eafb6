"""Batched compute: one forward pass gives the class scores and the target layer's activations,
one backward pass gives each image's gradient with respect to its own activations.

The activations are captured *during the model's normal forward pass* by wrapping the target
layer's ``call`` for the duration of the pass, instead of building a second model that ends at
the layer. That rebuild is what fails on nested and Sequential models ("Graph disconnected");
the capture works on any model Keras can call.

The compiled step is traced once per engine: its input signature leaves the batch dimension
open, so the final, partial batch reuses the trace. Runs too small to repay tracing use the
same step eagerly.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from camcli.heatmaps import normalize
from camcli.loading import LoadedModel, patched
from camcli.methods import Method, get_method


@dataclass(frozen=True)
class Targets:
    """Which classes to explain for every image of a run.

    ``classes`` given: explain exactly those for every image. Otherwise explain each image's
    ``top`` best-scoring classes (top-1 by default).
    """

    classes: tuple[int, ...] | None = None
    top: int = 1

    @property
    def count(self) -> int:
        return len(self.classes) if self.classes else self.top


@dataclass
class BatchOutput:
    """What the engine returns for a batch of ``n`` images explaining ``k`` classes each."""

    logits: np.ndarray  # (n, classes)
    targets: np.ndarray  # (n, k) class indices explained
    target_scores: np.ndarray  # (n, k) the score each map explains
    cams: np.ndarray  # (n, k, h, w) normalised to [0, 1]
    empty: np.ndarray  # (n, k) True where the map had no positive evidence


class Engine:
    """Computes CAMs for batches of preprocessed images on one model and layer."""

    def __init__(
        self,
        loaded: LoadedModel,
        targets: Targets = Targets(),
        method: str | Method = "gradcam",
        compiled: bool = True,
    ):
        self.loaded = loaded
        self.targets = targets
        self.method = get_method(method) if isinstance(method, str) else method
        self.compiled = compiled
        self.trace_count = 0
        n_classes = len(loaded.labels)
        for index in targets.classes or ():
            if not 0 <= index < n_classes:
                raise ValueError(f"class index {index} out of range for {n_classes} outputs")
        if not targets.classes and not 1 <= targets.top <= n_classes:
            raise ValueError(f"cannot explain the top {targets.top} of {n_classes} classes")
        height, width = loaded.input_size
        signature = [tf.TensorSpec([None, height, width, loaded.channels], tf.float32)]
        self._step = tf.function(self._forward_backward, input_signature=signature)

    def run(self, batch: np.ndarray) -> BatchOutput:
        """Explain a preprocessed batch ``(n, height, width, channels)``."""
        step = self._step if self.compiled else self._forward_backward
        logits, targets, scores, activations, gradients = (
            t.numpy() for t in step(tf.convert_to_tensor(batch, tf.float32))
        )
        n, k = targets.shape
        # (k, n, h, w, c) -> one formula call over all n*k (image, class) pairs
        a = np.broadcast_to(activations[None], gradients.shape).reshape(-1, *activations.shape[1:])
        raw = self.method.cam(a, gradients.reshape(-1, *gradients.shape[2:]))
        cams, empty = normalize(raw)
        cams = cams.reshape(k, n, *cams.shape[1:]).transpose(1, 0, 2, 3)
        return BatchOutput(
            logits=logits,
            targets=targets,
            target_scores=scores,
            cams=cams,
            empty=empty.reshape(k, n).T,
        )

    def _forward_backward(self, images):
        """Forward pass with activation capture, then d(target score)/d(activations)."""
        self.trace_count += 1  # runs once per trace when compiled, every call when eager
        layer = self.loaded.layer
        k = self.targets.count
        with tf.GradientTape(watch_accessed_variables=False, persistent=k > 1) as tape:
            with patched(self.loaded.patches), _capture_output(layer, tape) as captured:
                outputs = self.loaded.model(images, training=False)
            logits = self._scores(outputs)
            targets = self._choose_targets(logits)
            scores = tf.gather(logits, targets, batch_dims=1)  # (n, k)
            # Each image's score depends only on its own activations (inference mode), so the
            # gradient of the batch sum is every image's own gradient, in one backward pass.
            totals = [tf.reduce_sum(scores[:, i]) for i in range(k)]
        activations = captured.value
        gradients = tf.stack([tape.gradient(total, activations) for total in totals])
        del tape
        return logits, targets, scores, activations, gradients

    def _scores(self, outputs):
        """The class scores: the chosen output; a binary sigmoid unit z becomes (-z, z)."""
        if isinstance(outputs, dict):
            # In the order of ``model.outputs`` (sorted keys), which ``output_index`` counts in.
            outputs = keras.tree.flatten(outputs)
        if isinstance(outputs, (list, tuple)):
            outputs = outputs[self.loaded.output_index]
        logits = tf.cast(outputs, tf.float32)
        if self.loaded.binary:
            logits = tf.concat([-logits, logits], axis=-1)
        return logits

    def _choose_targets(self, logits):
        n = tf.shape(logits)[0]
        if self.targets.classes:
            fixed = tf.constant(self.targets.classes, dtype=tf.int32)
            return tf.tile(fixed[None, :], [n, 1])
        if self.loaded.binary:
            # One sigmoid unit: the positive class (1) by default, whatever the prediction.
            order = tf.constant([1, 0][: self.targets.top], dtype=tf.int32)
            return tf.tile(order[None, :], [n, 1])
        return tf.math.top_k(logits, k=self.targets.top).indices


class _Captured:
    value = None


@contextlib.contextmanager
def _capture_output(layer, tape):
    """Temporarily wrap ``layer.call`` so its output is recorded and watched by ``tape``."""
    captured = _Captured()
    original = layer.call
    own_attribute = layer.__dict__.get("call")

    def call_and_capture(*args, **kwargs):
        output = original(*args, **kwargs)
        tape.watch(output)
        captured.value = output
        return output

    layer.call = call_and_capture
    try:
        yield captured
    finally:
        # Put back exactly what was there, so the user's model is left untouched.
        if own_attribute is None:
            del layer.call
        else:
            layer.call = own_attribute
    if captured.value is None:
        raise RuntimeError(f"layer {layer.name!r} was not called in the model's forward pass")
