"""Batched compute: one forward pass gives the class scores and the target layers' activations,
one backward pass gives each image's gradient with respect to its own activations.

The activations are captured *during the model's normal forward pass* by wrapping each target
layer's ``call`` for the duration of the pass, instead of building a second model that ends at
the layer. That rebuild is what fails on nested and Sequential models ("Graph disconnected");
the capture works on any model Keras can call.

Methods that score channels instead of differentiating (Score-CAM, Ablation-CAM) get extra model
calls here, flattened over (image, channel) pairs and run in large chunks. Ablation-CAM re-runs
only the part of the network after the layer when the graph can be cut there (a Functional
model with the layer at its top level); otherwise it runs the whole model with the layer's
output replaced.

Every compiled function is traced once per engine: input signatures leave the batch dimension
open, so the final, partial batch reuses the trace. Runs too small to repay tracing use the
same functions eagerly.

An image's numbers do not depend on which images share its batch: the model never sees a batch
of one (:data:`MIN_BATCH`). That is what lets a run batched differently — on Ray, with other
``--batch-size`` values, with failed inputs taken out of other batches — write the same bytes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
import tensorflow.experimental.numpy as tnp

from camcli import backprop
from camcli.heatmaps import normalize
from camcli.loading import LoadedModel, Patch, head_weights, patched
from camcli.methods import InputNeeds, Method, Needs, fullgrad_psi, get_method, image_keys

#: ``--aug-smooth``: horizontal flip × 3 scales (zoomed out and padded); maps are mapped back.
AUGMENTATIONS = tuple((flip, scale) for flip in (False, True) for scale in (1.0, 0.875, 0.75))
FUSIONS = ("mean", "max")
#: The fewest images the model is called on. On CPU, TensorFlow computes a lone image with other
#: kernels than a batch (measured with oneDNN's AVX2 kernels: logits 1e-5 apart), while every
#: batch of two or more gives an image the same bits whatever its neighbours and position; so a
#: lone image runs beside a copy of itself (the copy's results are dropped).
MIN_BATCH = 2


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


@dataclass(frozen=True)
class CamOptions:
    """How maps are made beyond the method's own formula (the method carries its own options)."""

    eigen_smooth: bool = False  # first principal component of the weighted activations
    aug_smooth: bool = False  # average over AUGMENTATIONS, each mapped back to the frame
    fuse: str = "mean"  # how maps of several layers combine

    def __post_init__(self):
        if self.fuse not in FUSIONS:
            raise ValueError(f"fuse must be one of {FUSIONS}, not {self.fuse!r}")


@dataclass
class BatchOutput:
    """What the engine returns for a batch of ``n`` images explaining ``k`` classes each."""

    logits: np.ndarray  # (n, classes)
    targets: np.ndarray  # (n, k) class indices explained
    target_scores: np.ndarray  # (n, k) the score each map explains
    cams: np.ndarray  # (n, k, h, w) normalised to [0, 1]
    empty: np.ndarray  # (n, k) True where the map had no positive evidence


class Engine:
    """Computes CAMs for batches of preprocessed images on one model and its target layers."""

    def __init__(
        self,
        loaded: LoadedModel,
        targets: Targets = Targets(),
        method: str | Method = "gradcam",
        compiled: bool = True,
        options: CamOptions = CamOptions(),
    ):
        self.loaded = loaded
        self.targets = targets
        self.method = get_method(method) if isinstance(method, str) else method
        self.compiled = compiled
        self.options = options
        self.trace_count = 0
        self.layers = [layer for _, layer in loaded.target_layers]
        # What turns each target's output into an (n, h, w, c) grid (tokens: camcli.adapters)
        self.adapters = [loaded.adapter(index) for index in range(len(self.layers))]
        self.attention, self._patches = attention_capture(loaded, self.method)
        n_classes = len(loaded.labels)
        for index in targets.classes or ():
            if not 0 <= index < n_classes:
                raise ValueError(f"class index {index} out of range for {n_classes} outputs")
        if not targets.classes and not 1 <= targets.top <= n_classes:
            raise ValueError(f"cannot explain the top {targets.top} of {n_classes} classes")
        height, width = loaded.input_size
        self._images_spec = tf.TensorSpec([None, height, width, loaded.channels], tf.float32)
        self._step = self._compile(
            self._forward_backward,
            [self._images_spec, tf.TensorSpec([None, targets.count], tf.int32)],
        )
        self._forward = self._compile(self._logits, [self._images_spec])
        self._tails: dict[int, object] = {}
        # What each channel-scoring need costs: the method says which it needs.
        self._channel_scorers = {
            Needs.MASKED_INPUT_SCORES: self._masked_input_scores,
            Needs.ABLATION_SCORES: self._ablation_scores,
        }
        # CAM: the classifier's weights on each target layer, found once (a usage error if the
        # model has no global-average-pooling + dense head there).
        self._heads = ([head_weights(loaded, layer) for layer in self.layers]
                       if self.method.needs is Needs.HEAD_WEIGHTS else [])
        # Second order (ShapleyCAM) and evidence at the input (input-resolution methods).
        step = [self._images_spec, tf.TensorSpec([None, targets.count], tf.int32)]
        self._second_order = self._compile(self._hessian_products, step)
        self._input_steps = {
            InputNeeds.GUIDED_GRADIENTS: self._compile(self._guided_gradients, step),
            # Always traced, also in an eager engine: TensorFlow's graph optimiser computes the
            # gradient down to the input with other bits than eager execution does (measured:
            # 2e-7 apart), and a run's bytes must not depend on how many images it has.
            InputNeeds.FULL_GRADIENTS: tf.function(self._full_gradients, input_signature=step),
        }

    def _compile(self, function, signature):
        return tf.function(function, input_signature=signature) if self.compiled else function

    # ----------------------------------------------------------------- public

    def run(self, batch: np.ndarray) -> BatchOutput:
        """Explain a preprocessed batch ``(n, height, width, channels)``."""
        batch = np.asarray(batch, dtype=np.float32)
        unset = np.full((len(batch), self.targets.count), -1, np.int32)
        logits, targets, scores, maps = self._maps(batch, unset)
        if self.options.aug_smooth:
            total = maps.astype(np.float64)
            for flip, scale in AUGMENTATIONS[1:]:
                _, _, _, augmented = self._maps(_augment(batch, flip, scale), targets)
                total += _invert(augmented, flip, scale, self.loaded.input_size)
            maps = total / len(AUGMENTATIONS)
        n, k, h, w = maps.shape
        cams, empty = normalize(maps.reshape(n * k, h, w))
        return BatchOutput(
            logits=logits,
            targets=targets,
            target_scores=scores,
            cams=cams.reshape(n, k, h, w),
            empty=empty.reshape(n, k),
        )

    def scores(self, batch: np.ndarray) -> np.ndarray:
        """The class scores (pre-activation logits) of a preprocessed batch, no maps."""
        return _batched(self._forward, np.asarray(batch, np.float32))

    # ----------------------------------------------------------------- one pass

    def _maps(self, batch: np.ndarray, forced: np.ndarray):
        """Logits, targets, scores and per-layer-normalised, fused maps ``(n, k, h, w)``."""
        n = len(batch)
        logits, targets, scores, activations, gradients = (
            _numpy(t) for t in self._step(tf.constant(_padded(batch)), tf.constant(_padded(forced)))
        )
        if len(targets) > n:  # the copy of a lone image: dropped
            logits, targets, scores = logits[:n], targets[:n], scores[:n]
            activations, gradients = [a[:n] for a in activations], [g[:, :n] for g in gradients]
        k = targets.shape[1]
        if self.method.needs_attention:
            return logits, targets, scores, self._attention_maps(activations, gradients, k)
        seeded = self.method.seeded or self.method.needs is Needs.NOISY_GRADIENTS
        keys = image_keys(batch) if seeded else None
        if self.method.needs is Needs.NOISY_GRADIENTS:
            gradients = self._noisy_gradients(batch, targets, keys)
        elif self.method.needs is Needs.HESSIAN_VECTOR_PRODUCTS:
            gradients = _call_padded(self._second_order, batch, targets)
        per_layer = []
        for index, a in enumerate(activations if self.method.layer_map else ()):
            evidence = self._evidence(index, batch, a, gradients, targets)
            a_kn = np.broadcast_to(a[None], (k, *a.shape)).reshape(k * n, *a.shape[1:])
            keys_kn = None if keys is None else np.tile(keys, k)
            raw = self.method.cam(a_kn, evidence, self.options.eigen_smooth, keys_kn)
            maps, _ = normalize(raw)
            per_layer.append(maps.reshape(k, n, *maps.shape[1:]).transpose(1, 0, 2, 3))
        maps = _fuse(per_layer, self.options.fuse) if per_layer else None
        if self.method.input_needs is not None:
            maps = self._input_maps(batch, targets, maps)
        return logits, targets, scores, maps

    def _input_maps(self, batch, targets, layer_maps):
        """Input-resolution maps ``(n, k, H, W)``: the method's input map, times the layer maps
        upsampled to the input when it makes those too (guided Grad-CAM)."""
        n, k = targets.shape
        evidence = _call_padded(self._input_steps[self.method.input_needs], batch, targets)
        evidence = evidence.reshape(k * n, *evidence.shape[2:])
        height, width = self.loaded.input_size
        upsampled = None
        if layer_maps is not None:
            h, w = layer_maps.shape[2:]
            flat = layer_maps.transpose(1, 0, 2, 3).reshape(k * n, h, w, 1)
            upsampled = tf.image.resize(flat, (height, width), method="bilinear").numpy()[..., 0]
        maps, _ = normalize(self.method.input_map(evidence, upsampled))
        return maps.reshape(k, n, height, width).transpose(1, 0, 2, 3)

    def _evidence(self, index: int, batch, activations, gradients, targets):
        """What the method needs besides layer ``index``'s activations, flattened to ``k * n``
        rows (class-major, like the maps)."""
        n, k = targets.shape
        needs = self.method.needs
        if needs is Needs.ACTIVATIONS:
            return None
        if needs is Needs.GRADIENTS:
            return gradients[index].reshape(k * n, *activations.shape[1:])
        # (k, n, samples, h, w, c) noisy gradients; (k, n, h, w, c, 2) gradients and H·A
        if needs in (Needs.NOISY_GRADIENTS, Needs.HESSIAN_VECTOR_PRODUCTS):
            return gradients[index].reshape(k * n, *gradients[index].shape[2:])
        if needs is Needs.HEAD_WEIGHTS:  # the targets' columns, class-major
            return self._heads[index][:, targets.T.ravel()].T
        scorer = self._channel_scorers[needs]
        return scorer(index, batch, activations, targets).reshape(k * n, -1)

    def _attention_maps(self, attentions, gradients, k: int) -> np.ndarray:
        """Maps ``(n, k, h, w)`` of an attention method from every attention layer's
        probabilities ``(n, heads, t, t)`` (and their gradients ``(k, n, heads, t, t)``)."""
        stacked = np.stack(attentions, axis=1)  # (n, layers, heads, t, t)
        n = len(stacked)
        a_kn = np.broadcast_to(stacked[None], (k, *stacked.shape))
        a_kn = a_kn.reshape(k * n, *stacked.shape[1:])
        g_kn = np.stack(gradients, axis=2).reshape(a_kn.shape) if gradients else None
        relevance = self.method.cam(a_kn, g_kn)
        maps, _ = normalize(self.adapters[0].relevance_grid(relevance))
        return maps.reshape(k, n, *maps.shape[1:]).transpose(1, 0, 2, 3)

    def _forward_backward(self, images, forced_targets):
        """Forward pass with activation capture, then d(target score)/d(activations)."""
        self.trace_count += 1  # runs once per trace when compiled, every call when eager
        k = self.targets.count
        needs_gradients = self.method.needs_gradients
        persistent = needs_gradients and k > 1
        with tf.GradientTape(watch_accessed_variables=False, persistent=persistent) as tape:
            with patched(self._patches), contextlib.ExitStack() as stack:
                # the attention methods' sources are the attention probabilities
                captures = [stack.enter_context(_capture_output(layer, tape))
                            for layer in (self.attention or self.layers)]
                outputs = self.loaded.model(images, training=False)
            logits = self._scores(outputs)
            chosen = self._choose_targets(logits)
            targets = tf.where(forced_targets >= 0, forced_targets, chosen)
            scores = tf.gather(logits, targets, batch_dims=1)  # (n, k)
            # What the method differentiates: the targets' logits, or its own (Finer-CAM's
            # contrast with the nearest classes).
            explained = self.method.explained_scores(logits, targets, scores)
            # Each image's score depends only on its own activations (inference mode), so the
            # gradient of the batch sum is every image's own gradient, in one backward pass.
            totals = [tf.reduce_sum(explained[:, i]) for i in range(k)]
        captured = [c.value for c in captures]
        gradients = []
        if needs_gradients:
            # Under a mixed policy (--precision) activations and gradients are bfloat16/float16;
            # the maps' arithmetic is float32 whatever the network ran in.
            # One backward pass per class gives the gradients of every captured tensor.
            per_class = [tape.gradient(total, captured) for total in totals]
            gradients = [tf.cast(tf.stack([g[i] for g in per_class]), tf.float32)
                         for i in range(len(captured))]
        del tape
        activations = [tf.cast(a, tf.float32) for a in captured]
        if self.attention:  # kept as they are: the method reads tokens' rows
            return logits, targets, scores, activations, gradients
        to_grid = [adapter.to_grid for adapter in self.adapters]
        activations = [grid(a) for grid, a in zip(to_grid, activations, strict=True)]
        gradients = [grid(g) for grid, g in zip(to_grid[: len(gradients)], gradients, strict=True)]
        return logits, targets, scores, activations, gradients

    # ----------------------------------------------------------------- beyond the gradient

    def _class_totals(self, scores):
        """Each explained class's score summed over the batch: one backward pass gives every
        image its own gradient (inference mode: images do not interact)."""
        return [tf.reduce_sum(scores[:, j]) for j in range(self.targets.count)]

    def _hessian_products(self, images, targets):
        """Per target layer ``(k, n, h, w, c, 2)``: the gradient g of the ReST score with
        respect to the activations A and the Hessian-vector product ``d(g · A)/dA`` (A fixed),
        by double backpropagation (ShapleyCAM)."""
        self.trace_count += 1
        with tf.GradientTape(watch_accessed_variables=False, persistent=True) as outer:
            with tf.GradientTape(watch_accessed_variables=False, persistent=True) as inner:
                with patched(self.loaded.patches), contextlib.ExitStack() as stack:
                    watchers = backprop.Watchers(inner, outer)
                    captures = [stack.enter_context(_capture_output(layer, watchers))
                                for layer in self.layers]
                    outputs = self.loaded.model(images, training=False)
                rest = backprop.rest_score(self._scores(outputs), targets,
                                           self.loaded.probability)
                totals = self._class_totals(rest)
            captured = [c.value for c in captures]
            grads = [[inner.gradient(t, a) for t in totals] for a in captured]
            products = [[tf.reduce_sum(g * tf.stop_gradient(a)) for g in row]
                        for a, row in zip(captured, grads, strict=True)]
        out = []
        for adapter, a, row, sums in zip(self.adapters, captured, grads, products, strict=True):
            hvps = [outer.gradient(p, a) for p in sums]
            hvps = [tf.zeros_like(a) if h is None else h for h in hvps]
            pairs = tf.cast(tf.stack([tf.stack(pair, -1)
                                      for pair in zip(row, hvps, strict=True)]), tf.float32)
            # tokens -> grid (camcli.adapters) for each of the pair (g, H·A)
            out.append(tf.stack([adapter.to_grid(pairs[..., i]) for i in range(2)], -1))
        return out

    def _guided_gradients(self, images, targets):
        """``(k, n, H, W, C)``: d(score)/d(input) with every activation guided (guided backprop)."""
        self.trace_count += 1
        model = self.loaded.model
        with tf.GradientTape(watch_accessed_variables=False, persistent=True) as tape:
            tape.watch(images)
            # The softmax bypass first, so the guided patches see the output layer bypassed.
            with patched(self.loaded.patches), patched(backprop.guided_patches(model)):
                logits = self._scores(model(images, training=False))
            totals = self._class_totals(tf.gather(logits, targets, batch_dims=1))
        return tf.stack([tape.gradient(total, images) for total in totals])

    def _full_gradients(self, images, targets):
        """``(k, n, H, W, 2)``: FullGrad's ψ(input-gradient ⊙ input) and the sum over every
        bias layer of ψ(gradient ⊙ bias) upsampled to the input, reduced in the graph."""
        self.trace_count += 1
        captures = backprop.bias_layers(self.loaded.model)
        with tf.GradientTape(watch_accessed_variables=False, persistent=True) as tape:
            tape.watch(images)
            with patched(self.loaded.patches), backprop.capturing_biases(captures, tape):
                logits = self._scores(self.loaded.model(images, training=False))
            totals = self._class_totals(tf.gather(logits, targets, batch_dims=1))
        captured = [c for c in captures if c.output is not None]
        size = self.loaded.input_size
        maps = []
        for total in totals:
            grads = tape.gradient(total, [images, *(c.output for c in captured)])
            input_term = _psi(grads[0] * images, tnp)
            bias_term = tf.zeros_like(input_term)
            for capture, grad in zip(captured, grads[1:], strict=True):
                if grad is not None:
                    term = tf.cast(grad, tf.float32) * tf.cast(capture.bias(), tf.float32)
                    psi = _psi(term, tnp)[..., None]
                    bias_term += tf.image.resize(psi, size, method="bilinear")[..., 0]
            maps.append(tf.stack([input_term, bias_term], axis=-1))
        return tf.stack(maps)

    def _logits(self, images):
        with patched(self.loaded.patches):
            return self._scores(self.loaded.model(images, training=False))

    def _scores(self, outputs):
        """The class scores: the chosen output; a binary sigmoid unit z becomes (-z, z).

        Always float32, also when the network runs in reduced precision (``--precision``): the
        explained score, the softmax and the target choice are computed on float32 logits.
        """
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

    def _noisy_gradients(self, batch, targets, keys) -> list[np.ndarray]:
        """Per layer, ``(k, n, samples, h, w, c)``: the gradients of the method's noisy copies
        of the batch (one model call per copy, each the batch's size, never a lone image),
        explaining the clean images' targets."""
        n = len(batch)
        forced = tf.constant(_padded(targets.astype(np.int32)))
        samples = []
        for noisy in self.method.noisy_copies(batch, keys):
            gradients = self._step(tf.constant(_padded(noisy)), forced)[4]
            samples.append([_numpy(g)[:, :n] for g in gradients])
        return [np.stack([s[index] for s in samples], axis=2) for index in range(len(self.layers))]

    # ----------------------------------------------------------------- channel scores

    def _masked_input_scores(self, index: int, batch, activations, targets) -> np.ndarray:
        """Target scores of the input masked by each channel's normalised, upsampled map, for
        the channels the method chooses. Returns ``(k, n, channels)``; channels not scored are
        ``-inf``."""
        n, _, _, c = activations.shape
        k = targets.shape[1]
        chosen = self.method.channels_to_score(activations)
        pairs = [(i, ch) for i in range(n) for ch in chosen[i]]
        out = np.full((k, n, c), -np.inf)
        height, width = self.loaded.input_size
        keys = image_keys(batch)
        for images, channels in _chunks(pairs, self.method.chunk_size):
            maps = activations[images, :, :, channels][..., None]  # (m, h, w, 1)
            masks = tf.image.resize(maps, (height, width), method="bilinear").numpy()
            low = masks.min(axis=(1, 2, 3), keepdims=True)
            span = masks.max(axis=(1, 2, 3), keepdims=True) - low
            masks = np.where(span > 0, (masks - low) / np.where(span > 0, span, 1), 0.0)
            variants = self.method.masked_inputs(batch[images], masks,
                                                 np.stack([keys[images], channels], axis=1))
            logits = [_batched(self._forward, v.astype(np.float32)) for v in variants]
            logits = logits[0] if len(logits) == 1 else np.mean(logits, axis=0)
            for j in range(k):
                out[j, images, channels] = logits[np.arange(len(images)), targets[images, j]]
        return out

    def _ablation_scores(self, index: int, batch, activations, targets) -> np.ndarray:
        """Column 0: the score from the unablated activations; column ``c + 1``: with channel c
        zeroed (channels the method does not score keep the unablated score). Returns
        ``(k, n, channels + 1)``."""
        n, _, _, c = activations.shape
        k = targets.shape[1]
        tail = self._tail(index)
        base = _batched(tail, activations, batch)
        rows = np.arange(n)
        out = np.empty((k, n, c + 1))
        for j in range(k):
            out[j] = base[rows, targets[:, j]][:, None]
        chosen = self.method.channels_to_score(activations)
        pairs = [(i, ch) for i in range(n) for ch in chosen[i]]
        for images, channels in _chunks(pairs, self.method.chunk_size):
            ablated = activations[images].copy()
            ablated[np.arange(len(images)), :, :, channels] = 0.0
            logits = _batched(tail, ablated, batch[images])
            for j in range(k):
                out[j, images, channels + 1] = logits[np.arange(len(images)), targets[images, j]]
        return out

    def _tail(self, index: int):
        """A function (activations, images) -> scores that runs the network after layer
        ``index``: the graph cut at the layer where possible, else a full pass with the layer's
        output replaced."""
        if index in self._tails:
            return self._tails[index]
        layer = self.layers[index]
        model = self.loaded.model
        cut = None
        if any(candidate is layer for candidate in model.layers):
            try:
                cut = keras.Model(layer.output, model.outputs[self.loaded.output_index])
            except Exception:  # not a clean cut (a branch, a skip connection): full pass
                cut = None

        def through_cut(activations, images):
            with patched(self.loaded.patches):
                return self._scores(cut(activations, training=False))

        adapter = self.adapters[index]

        def with_replaced_output(activations, images):
            replacing = adapter.replacing_call(layer.call, activations)
            with patched(self.loaded.patches), _call_replaced(layer, replacing):
                return self._scores(self.loaded.model(images, training=False))

        shape = [None, *adapter.shape]
        signature = [tf.TensorSpec(shape, tf.float32), self._images_spec]
        self._tails[index] = self._compile(
            through_cut if cut is not None else with_replaced_output, signature
        )
        return self._tails[index]


# --------------------------------------------------------------------------- helpers


def attention_capture(loaded: LoadedModel, method: Method):
    """The softmax layers whose outputs an attention method captures (one per
    ``MultiHeadAttention``, in order) and the patches a pass runs under; a usage error when the
    method cannot apply to the model."""
    from camcli import token_layers
    from camcli.errors import UsageError
    from camcli.methods import METHODS

    if not method.needs_attention:
        return [], loaded.patches
    layers = [layer for _, layer in token_layers.attention_layers(loaded.model)]
    adapter = loaded.adapter(0)
    if not layers or adapter.kind != "tokens" or adapter.prefix < 1:
        usable = ", ".join(m.name for m in METHODS.values() if not m.needs_attention)
        raise UsageError(
            f"--method {method.name} needs a transformer with a class token and Keras "
            f"MultiHeadAttention layers (ViT, DeiT), explained at a token layer; for this model "
            f"use one of: {usable}"
        )
    forcing = tuple(Patch(layer, "_compute_attention", token_layers.explicit_attention(layer))
                    for layer in layers)
    return [layer._softmax for layer in layers], (*loaded.patches, *forcing)


def _chunks(pairs: list, size: int):
    """``(images, channels)`` index arrays for consecutive chunks of (image, channel) pairs."""
    for start in range(0, len(pairs), size):
        images, channels = np.array(pairs[start : start + size]).T
        yield images, channels


def _padded(batch: np.ndarray) -> np.ndarray:
    """``batch`` with a lone image repeated to :data:`MIN_BATCH` rows."""
    return np.concatenate([batch] * MIN_BATCH) if len(batch) == 1 else batch


def _batched(function, *batches: np.ndarray) -> np.ndarray:
    """``function`` (one result row per input row) on ``batches``, never on a batch of one."""
    n = len(batches[0])
    result = _numpy(function(*(tf.constant(_padded(b), tf.float32) for b in batches)))
    return result[:n]


#: FullGrad's ψ in the graph, as written (no AutoGraph rewrite: it has no control flow).
_psi = tf.autograph.experimental.do_not_convert(fullgrad_psi)


def _call_padded(function, batch: np.ndarray, targets: np.ndarray):
    """``function(images, targets)`` (class-major results ``(k, n, ...)``, or a list of them)
    on a batch never of one (:data:`MIN_BATCH`)."""
    n = len(batch)
    result = _numpy(function(tf.constant(_padded(batch), tf.float32),
                             tf.constant(_padded(targets), tf.int32)))
    return [r[:, :n] for r in result] if isinstance(result, list) else result[:, :n]


def _numpy(value):
    if isinstance(value, (list, tuple)):
        return [_numpy(v) for v in value]
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def _fuse(maps: list[np.ndarray], how: str) -> np.ndarray:
    """Resize each layer's ``(n, k, h, w)`` maps to the largest size and combine them."""
    if len(maps) == 1:
        return maps[0]
    height = max(m.shape[2] for m in maps)
    width = max(m.shape[3] for m in maps)
    resized = []
    for m in maps:
        n, k, h, w = m.shape
        flat = m.reshape(n * k, h, w, 1)
        if (h, w) != (height, width):
            flat = tf.image.resize(flat, (height, width), method="bilinear").numpy()
        resized.append(flat.reshape(n, k, height, width))
    stacked = np.stack(resized)
    return stacked.max(axis=0) if how == "max" else stacked.mean(axis=0)


def _augment(batch: np.ndarray, flip: bool, scale: float) -> np.ndarray:
    """Flip horizontally and/or shrink by ``scale``, centred on a zero (mean-colour) canvas."""
    out = batch[:, :, ::-1] if flip else batch
    if scale == 1.0:
        return np.ascontiguousarray(out)
    n, height, width, channels = out.shape
    h, w = round(height * scale), round(width * scale)
    top, left = (height - h) // 2, (width - w) // 2
    canvas = np.zeros_like(out)
    canvas[:, top : top + h, left : left + w] = tf.image.resize(out, (h, w)).numpy()
    return canvas


def _invert(maps: np.ndarray, flip: bool, scale: float, input_size) -> np.ndarray:
    """Map ``(n, k, h, w)`` maps of augmented images back to the original frame."""
    n, k, h, w = maps.shape
    flat = maps.reshape(n * k, h, w, 1)
    if scale != 1.0:
        height, width = input_size
        full = tf.image.resize(flat, (height, width), method="bilinear").numpy()
        ch, cw = round(height * scale), round(width * scale)
        top, left = (height - ch) // 2, (width - cw) // 2
        crop = full[:, top : top + ch, left : left + cw]
        flat = tf.image.resize(crop, (h, w), method="area").numpy()
    out = flat.reshape(n, k, h, w)
    return out[..., ::-1] if flip else out


class _Captured:
    value = None


@contextlib.contextmanager
def _capture_output(layer, tape):
    """Temporarily wrap ``layer.call`` so its output is recorded and watched by ``tape``."""
    captured = _Captured()
    original = layer.call

    def call_and_capture(*args, **kwargs):
        output = original(*args, **kwargs)
        tape.watch(output)
        captured.value = output
        return output

    with _call_replaced(layer, call_and_capture):
        yield captured
    if captured.value is None:
        raise RuntimeError(f"layer {layer.name!r} was not called in the model's forward pass")


@contextlib.contextmanager
def _call_replaced(layer, call):
    own_attribute = layer.__dict__.get("call")
    layer.call = call
    try:
        yield
    finally:
        # Put back exactly what was there, so the user's model is left untouched.
        if own_attribute is None:
            del layer.call
        else:
            layer.call = own_attribute
