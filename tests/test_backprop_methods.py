"""The methods that need more than one gradient (issue 24, part B): ShapleyCAM (second order),
FullGrad (bias gradients), guided backprop (a ReLU gradient override) and guided Grad-CAM.

Each is checked against an independent implementation written here: tiny networks whose
forward and backward passes are spelled out in numpy (3x3 convolutions as shifted matrix
products, batch norm as an affine map, ReLU masks), so the Hessian-vector product, every bias
gradient and the guided backward pass are known exactly. Plus: the user's model is untouched
by the overrides. (The CLI's input-resolution outputs: test_method_family.py; an audit:
test_audit.py; real weights: test_real_weights_methods.py.)
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from test_method_family import _bilinear, _normalised

from camcli.engine import Engine, Targets
from camcli.errors import UsageError
from camcli.methods import METHODS, InputNeeds, Needs, fullgrad_psi, get_method

CLASSES = (0, 2)
TOL = 1e-4


def _run(loaded, method, images, classes=CLASSES, compiled=False):
    return Engine(loaded, Targets(classes=classes), get_method(method), compiled=compiled).run(
        images)


def _set(model, name, *weights):
    model.get_layer(name).set_weights([np.asarray(w, np.float32) for w in weights])


def _conv3x3(x, kernel, bias):
    """'same' 3x3 cross-correlation, stride 1, as Keras computes it."""
    n, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = sum(padded[:, i : i + h, j : j + w] @ kernel[i, j] for i in range(3) for j in range(3))
    return out + bias


def _conv3x3_input_gradient(upstream, kernel):
    """The gradient of :func:`_conv3x3` with respect to its input."""
    n, h, w, _ = upstream.shape
    grad = np.zeros((n, h + 2, w + 2, kernel.shape[2]))
    for i in range(3):
        for j in range(3):
            grad[:, i : i + h, j : j + w] += upstream @ kernel[i, j].T
    return grad[:, 1:-1, 1:-1]


def _psi(values):
    """FullGrad's ψ before upsampling, written out: |v| min-max scaled per image over the whole
    tensor, summed over channels."""
    out = []
    for v in np.abs(values):
        out.append(((v - v.min()) / (v.max() - v.min() + 1e-6)).sum(axis=-1))
    return np.array(out)


def test_the_methods_declare_what_they_need():
    assert METHODS["shapleycam"].needs is Needs.HESSIAN_VECTOR_PRODUCTS
    assert METHODS["fullgrad"].input_needs is InputNeeds.FULL_GRADIENTS
    assert not METHODS["fullgrad"].layer_map and not METHODS["guided-backprop"].layer_map
    assert METHODS["guided-backprop"].input_needs is InputNeeds.GUIDED_GRADIENTS
    gg = METHODS["guided-gradcam"]
    assert gg.input_needs is InputNeeds.GUIDED_GRADIENTS and gg.layer_map and gg.needs_gradients
    assert not METHODS["guided-backprop"].class_discriminative  # the same map for every class
    assert METHODS["gradcam"].input_needs is None  # layer-resolution methods


def test_finercam_refuses_a_base_that_needs_more_than_layer_gradients():
    # Finer-CAM takes only its base's layer formula: guided Grad-CAM's input stage would be
    # dropped silently, ShapleyCAM's second-order evidence never computed.
    for base in ("guided-gradcam", "shapleycam", "fullgrad"):
        with pytest.raises(UsageError, match="the base method must be a gradient method"):
            get_method("finercam", base=base)
    assert get_method("finercam", base="layercam").base == "layercam"


def test_fullgrad_psi_in_numpy_and_in_the_graph():
    import tensorflow as tf
    import tensorflow.experimental.numpy as tnp

    values = np.random.default_rng(0).normal(size=(3, 4, 5, 6))
    np.testing.assert_allclose(fullgrad_psi(values), _psi(values), atol=1e-12)
    graph = fullgrad_psi(tf.constant(values, tf.float32), tnp).numpy()
    np.testing.assert_allclose(graph, _psi(values), atol=1e-5)


# =========================================================================== ShapleyCAM


def test_shapleycam_matches_a_hand_written_hessian_vector_product(make_loaded):
    # act (identity: A = x) -> 1x1 conv c1 (ReLU) -> GAP -> Dense. The ReST score
    # s = y_t + log softmax(y)_t = 2 y_t - LSE(y); y is piecewise linear in A, so with
    # J = dy/dA: g = J^T (2 e_t - p) and H A = -J^T (diag p - p p^T) (J A).
    rng = np.random.default_rng(1)
    h, w, c = 4, 5, 3
    inputs = keras.Input((h, w, c))
    a = keras.layers.Activation("linear", name="act")(inputs)
    x = keras.layers.Conv2D(5, 1, activation="relu", name="c1")(a)
    outputs = keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    k1, b1 = rng.normal(size=(1, 1, c, 5)), rng.normal(size=5) * 0.3
    head, bias = rng.normal(size=(5, 3)) * 2, rng.normal(size=3)
    _set(model, "c1", k1, b1)
    _set(model, "head", head, bias)
    images = rng.uniform(0, 1, size=(3, h, w, c)).astype(np.float32)

    A = images.astype(np.float64)
    z = A @ k1[0, 0] + b1
    y = np.maximum(z, 0).mean(axis=(1, 2)) @ head + bias
    p = np.exp(y - y.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    # J[q]: dy_q/dA per image, (n, h, w, c)
    J = np.stack([((z > 0) * head[:, q]) @ k1[0, 0].T / (h * w) for q in range(3)])
    JA = np.einsum("qnhwc,nhwc->nq", J, A)
    expected = []
    for t in CLASSES:
        g = np.einsum("qnhwc,nq->nhwc", J, 2 * np.eye(3)[t] - p)
        softmax_hessian = p[:, :, None] * np.eye(3) - p[:, :, None] * p[:, None]  # diag p - pp^T
        curvature = np.einsum("nq,nqr->nr", JA, softmax_hessian)
        hvp = -np.einsum("qnhwc,nq->nhwc", J, curvature)
        weights = (g - 0.5 * hvp).mean(axis=(1, 2))
        expected.append(_normalised(np.einsum("nhwc,nc->nhw", A, weights), allow_empty=True))
    expected = np.stack(expected, axis=1)
    loaded = make_loaded(model, "act")
    out = _run(loaded, "shapleycam", images)
    np.testing.assert_allclose(out.cams, expected, atol=TOL)
    assert not out.empty.all()
    # The second-order term matters: not Grad-CAM's map.
    assert np.abs(out.cams - _run(loaded, "gradcam", images).cams).max() > 0.05


# =========================================================================== FullGrad


def test_fullgrad_matches_hand_written_bias_gradients(make_loaded):
    # x -> c1 (3x3 conv + ReLU) -> bn -> 2x2 average pool -> c2 (1x1 conv) -> ReLU -> GAP -> head
    rng = np.random.default_rng(2)
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(3, 3, padding="same", activation="relu", name="c1")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.AveragePooling2D(2)(x)
    x = keras.layers.Conv2D(2, 1, name="c2")(x)
    x = keras.layers.ReLU(name="act")(x)
    outputs = keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    k1, b1 = rng.normal(size=(3, 3, 2, 3)), rng.normal(size=3)
    gamma, beta = rng.uniform(0.5, 2, 3), rng.normal(size=3)
    mean, var = rng.normal(size=3), rng.uniform(0.5, 2, 3)
    k2, b2 = rng.normal(size=(1, 1, 3, 2)), rng.normal(size=2)
    head, bias = rng.normal(size=(2, 3)), rng.normal(size=3)
    for name, weights in (("c1", (k1, b1)), ("bn", (gamma, beta, mean, var)),
                          ("c2", (k2, b2)), ("head", (head, bias))):
        _set(model, name, *weights)
    images = rng.normal(size=(3, 6, 6, 2)).astype(np.float32)

    x = images.astype(np.float64)
    z1 = _conv3x3(x, k1, b1)
    scale = gamma / np.sqrt(var + 1e-3)  # Keras' default epsilon
    shift = beta - scale * mean  # the batch norm's effective bias
    u = scale * np.maximum(z1, 0) + shift
    pooled = u.reshape(3, 3, 2, 3, 2, 3).mean(axis=(2, 4))
    z2 = pooled @ k2[0, 0] + b2
    y = np.maximum(z2, 0).mean(axis=(1, 2)) @ head + bias
    expected = []
    for t in CLASSES:
        dz2 = (z2 > 0) * head[:, t] / 9
        du = np.repeat(np.repeat(dz2 @ k2[0, 0].T, 2, axis=1), 2, axis=2) / 4
        dz1 = du * scale * (z1 > 0)
        dx = _conv3x3_input_gradient(dz1, k1)
        terms = [dx * x, dz1 * b1, du * shift, dz2 * b2]
        # Completeness (the paper's eq. 3): the terms and the head's bias add up to the score,
        # which checks the backward pass written above.
        np.testing.assert_allclose(sum(v.sum(axis=(1, 2, 3)) for v in terms) + bias[t], y[:, t],
                                   rtol=1e-9)
        c2 = _bilinear(_psi(terms[3])[..., None], 6, 6)[..., 0]
        raw = _psi(terms[0]) + _psi(terms[1]) + _psi(terms[2]) + c2
        expected.append(raw / raw.max(axis=(1, 2), keepdims=True))
    out = _run(make_loaded(model, "act"), "fullgrad", images)
    assert out.cams.shape == (3, 2, 6, 6)  # the input's size, not act's 3x3
    np.testing.assert_allclose(out.cams, np.stack(expected, axis=1), atol=TOL)


# =========================================================================== guided backprop


def _guided_net(activation, size=6):
    inputs = keras.Input((size, size, 2))
    x = inputs if size == 6 else keras.layers.AveragePooling2D(size // 6)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation=activation, name="c1")(x)
    x = keras.layers.Conv2D(3, 1, name="c2")(x)
    x = keras.layers.ReLU(name="act")(x)
    outputs = keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


def _derivative(z, activation):
    if activation == "relu":
        return (z > 0).astype(float)
    sigmoid = 1 / (1 + np.exp(-z))
    return sigmoid * (1 + z * (1 - sigmoid))  # swish


@pytest.mark.parametrize("activation", ["relu", "swish"])
def test_guided_backprop_matches_a_hand_written_backward_pass(make_loaded, activation):
    # Guided rule at every activation: backward = ReLU(upstream) * f'(input). For ReLU that is
    # Springenberg et al.'s "positive gradients where the input was positive"; for swish the
    # same rule with swish's derivative (README, "guided-backprop").
    rng = np.random.default_rng(3)
    model = _guided_net(activation)
    k1, b1 = rng.normal(size=(3, 3, 2, 4)), rng.normal(size=4) * 0.5
    k2, b2 = rng.normal(size=(1, 1, 4, 3)), rng.normal(size=3) * 0.5
    head = rng.normal(size=(3, 3))
    _set(model, "c1", k1, b1)
    _set(model, "c2", k2, b2)
    _set(model, "head", head, np.zeros(3))
    images = rng.normal(size=(3, 6, 6, 2)).astype(np.float32)

    x = images.astype(np.float64)
    z1 = _conv3x3(x, k1, b1)
    r1 = np.maximum(z1, 0) if activation == "relu" else z1 / (1 + np.exp(-z1))
    z2 = r1 @ k2[0, 0] + b2
    guided, plain = [], []
    for t in CLASSES:
        up = np.broadcast_to(head[:, t] / 36, z2.shape)
        for rule, out in ((lambda g: np.maximum(g, 0), guided), (lambda g: g, plain)):
            dz2 = rule(up) * (z2 > 0)
            dz1 = rule(dz2 @ k2[0, 0].T) * _derivative(z1, activation)
            out.append(np.abs(_conv3x3_input_gradient(dz1, k1)).max(axis=-1))
    guided = _normalised(np.stack(guided, 1).reshape(6, 6, 6)).reshape(3, 2, 6, 6)
    plain = _normalised(np.stack(plain, 1).reshape(6, 6, 6)).reshape(3, 2, 6, 6)
    loaded = make_loaded(model, "act")
    out = _run(loaded, "guided-backprop", images)
    np.testing.assert_allclose(out.cams, guided, atol=TOL)
    assert np.abs(guided - plain).max() > 0.05  # the override is what makes the difference
    # The user's model is left as it was: its own gradient is the plain one again.
    import tensorflow as tf

    assert model.get_layer("c1").activation is keras.activations.get(activation)
    assert "call" not in vars(model.get_layer("act"))
    tensor = tf.constant(images)
    with tf.GradientTape() as tape:
        tape.watch(tensor)
        score = tf.reduce_sum(model(tensor)[:, CLASSES[0]])
    ordinary = np.abs(tape.gradient(score, tensor).numpy()).max(axis=-1)
    np.testing.assert_allclose(ordinary / ordinary.max(axis=(1, 2), keepdims=True),
                               plain[:, 0], atol=TOL)


def test_guided_gradcam_is_guided_backprop_times_upsampled_gradcam(make_loaded):
    rng = np.random.default_rng(4)
    model = _guided_net("relu", size=12)  # act: 6x6 on a 12x12 input
    model.set_weights([rng.normal(size=w.shape).astype(np.float32) * 0.5
                       for w in model.get_weights()])
    loaded = make_loaded(model, "act")
    images = rng.normal(size=(3, 12, 12, 2)).astype(np.float32)
    guided = _run(loaded, "guided-backprop", images, compiled=True)
    gradcam = _run(loaded, "gradcam", images, compiled=True)
    both = _run(loaded, "guided-gradcam", images, compiled=True)
    h, w = gradcam.cams.shape[2:]
    assert (h, w) != (12, 12) and both.cams.shape == (3, 2, 12, 12)
    upsampled = _bilinear(gradcam.cams.reshape(6, h, w, 1), 12, 12)[..., 0]
    expected = _normalised(guided.cams.reshape(6, 12, 12) * upsampled, allow_empty=True)
    np.testing.assert_allclose(both.cams, expected.reshape(3, 2, 12, 12), atol=TOL)
