"""CAM methods: each is a strategy object holding its formula, what it needs and its options.

Every formula takes ``activations`` shaped ``(n, height, width, channels)`` and the *evidence*
its method asks the engine for, and returns the *weighted activations*, same shape. The map is
then ``ReLU(sum over channels)`` (:func:`combine`), or, with ``eigen_smooth``, ``ReLU`` of their
first principal component (:func:`first_component`), as in pytorch-grad-cam.

What a method needs is declared once, on the method (:class:`Needs`): the gradient of each
image's own target score with respect to its own activations, nothing beyond the activations,
or channel scores from extra model calls — the target scores of the input masked by each
channel (Score-CAM) or of the network with each channel ablated (Ablation-CAM), or the gradient
and a Hessian-vector product (ShapleyCAM). Input-resolution methods (:class:`InputResolutionMethod`:
FullGrad, guided backprop, guided Grad-CAM) also declare what they need at the model's input
(:class:`InputNeeds`); their maps are at the input's size. The engine asks the method and
computes exactly that; it never looks at a method's name. A channel-scoring
method also carries its own options (how many masked inputs per model call, which channels).

Adding a method: write its formula below and add one row to :data:`METHODS`, saying whether its
maps depend on the explained class (``class_discriminative``: the real-weights test holds every
such method to putting each class's map on its own object). The CLI's
``--method`` help, the README's table (checked by a test) and the tests' method lists all read
that table. Formulas know nothing of models or files, so they are tested on hand-made arrays.
Normalisation to [0, 1] lives in :mod:`camcli.heatmaps`.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: Guards divisions whose denominator is zero only where the numerator is zero too.
_EPS = 1e-12
#: Masked inputs (Score-CAM) or ablated activations (Ablation-CAM) per model call.
DEFAULT_CHUNK_SIZE = 64


class Needs(str, enum.Enum):
    """What a method takes from the engine besides the target layer's activations."""

    GRADIENTS = "gradients"  # d(target score) / d(activations), one backward pass
    ACTIVATIONS = "activations"  # nothing more: gradient-free
    MASKED_INPUT_SCORES = "masked_input_scores"  # scores of the input masked by each channel
    ABLATION_SCORES = "ablation_scores"  # unablated score, then the score per zeroed channel
    HEAD_WEIGHTS = "head_weights"  # the classifier's weights on the pooled layer (CAM), per class
    NOISY_GRADIENTS = "noisy_gradients"  # the gradients of noisy copies of the input
    # --- second order (ShapleyCAM)
    HESSIAN_VECTOR_PRODUCTS = "gradients_and_hessian_vector_products"  # (g, H·A) of the ReST score
    # Transformers (camcli.attention): every MultiHeadAttention's probabilities (+ gradients)
    ATTENTION = "attention"
    ATTENTION_GRADIENTS = "attention_gradients"


class InputNeeds(str, enum.Enum):
    """What a method takes at the model's *input* (its maps are at the input's resolution)."""

    GUIDED_GRADIENTS = "guided_input_gradients"  # d(score)/d(input), every ReLU guided
    FULL_GRADIENTS = "input_and_bias_gradients"  # FullGrad's ψ(input term), Σ ψ(bias terms)


@dataclass(frozen=True)
class Method:
    """A CAM method: its name, its formula, what it needs from the engine, its paper.

    Gradient methods are plain instances; methods that score channels with extra model calls
    are :class:`ChannelScoringMethod` instances, which carry their own options.
    """

    name: str
    formula: Callable[..., np.ndarray]
    reference: str
    needs: Needs = Needs.GRADIENTS
    principal_component: bool = False  # the map is always the first principal component
    seeded: bool = False  # the formula draws random numbers: it takes ``keys=``, one per row
    class_discriminative: bool = True  # maps differ by class (False: the same for every class)
    input_needs: InputNeeds | None = None  # evidence at the input: maps at the input's size

    @property
    def needs_gradients(self) -> bool:
        return self.needs in (Needs.GRADIENTS, Needs.NOISY_GRADIENTS, Needs.ATTENTION_GRADIENTS)

    @property
    def needs_attention(self) -> bool:
        return self.needs in (Needs.ATTENTION, Needs.ATTENTION_GRADIENTS)

    @property
    def layer_map(self) -> bool:
        """Whether the method makes a map at the target layer(s) (``formula``)."""
        return self.formula is not None

    @property
    def scores_channels(self) -> bool:
        return self.needs in (Needs.MASKED_INPUT_SCORES, Needs.ABLATION_SCORES)

    def configure(self, **options) -> Method:
        """This method with those of ``options`` that are its own set (the others, which belong
        to other methods, are ignored, so one set of command-line options fits every method)."""
        own = {f.name for f in dataclasses.fields(self)} - _BASE_FIELDS
        chosen = {name: value for name, value in options.items() if name in own}
        return dataclasses.replace(self, **chosen) if chosen else self

    def recorded_options(self) -> dict:
        """The method's own options that change the maps, as recorded in every record: by
        default those its formula takes."""
        return self.formula_options()

    def formula_options(self) -> dict:
        """The keyword arguments the formula takes from the method's own options."""
        return {}

    def explained_scores(self, logits, targets, scores):
        """The scores ``(n, k)`` whose gradients the method explains, from the logits
        ``(n, classes)``, the targets ``(n, k)`` and their logits ``scores``: by default the
        targets' own logits. Written with ``keras.ops`` where overridden (it runs in the
        engine's graph)."""
        return scores

    def cam(self, activations, evidence=None, eigen_smooth: bool = False,
            keys=None) -> np.ndarray:
        """Raw (unnormalised) maps ``(n, h, w)`` from the activations and what :attr:`needs`
        asked for (None for gradient-free methods); ``keys``: one integer per row, the seed
        of a :attr:`seeded` method's random draws (:func:`image_keys`)."""
        options = self.formula_options()
        if self.seeded:
            options["keys"] = keys
        if self.needs is Needs.ACTIVATIONS:
            weighted = self.formula(activations, **options)
        else:
            weighted = self.formula(activations, evidence, **options)
        return combine(weighted, eigen_smooth or self.principal_component)


_BASE_FIELDS = {f.name for f in dataclasses.fields(Method)}


@dataclass(frozen=True)
class ChannelScoringMethod(Method):
    """A method whose channel weights come from extra model calls, ``chunk_size`` at a time.

    It must say which channel scores it needs (``needs=``): there is no default, so a new
    method cannot silently be given another method's scores.
    """

    chunk_size: int = DEFAULT_CHUNK_SIZE

    def __post_init__(self):
        if not self.scores_channels:
            raise ValueError(
                f"{self.name}: a channel-scoring method must declare the channel scores it "
                f"needs ({Needs.MASKED_INPUT_SCORES.value} or {Needs.ABLATION_SCORES.value})"
            )
        if self.chunk_size < 1:
            raise ValueError(f"chunk size must be at least 1, not {self.chunk_size}")

    def channels_to_score(self, activations: np.ndarray) -> np.ndarray:
        """``(n, m)`` sorted channel indices to score per image: every channel."""
        n, c = activations.shape[0], activations.shape[-1]
        return np.broadcast_to(np.arange(c), (n, c))

    def masked_inputs(self, images: np.ndarray, masks: np.ndarray, keys: np.ndarray):
        """The inputs whose target scores, averaged, score each (image, channel) pair: from
        the pairs' images ``(m, H, W, C)``, normalised masks ``(m, H, W, 1)`` and ``keys``
        ``(m, 2)`` (image key, channel), the seeds of any noise. Score-CAM: the masked image."""
        yield images * masks


@dataclass(frozen=True)
class ScoreCAM(ChannelScoringMethod):
    """Score-CAM, optionally on the ``channels`` highest-variance channels (Faster Score-CAM)."""

    needs: Needs = Needs.MASKED_INPUT_SCORES
    channels: int | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.channels is not None and self.channels < 1:
            raise ValueError(f"scorecam channels must be at least 1, not {self.channels}")

    def channels_to_score(self, activations: np.ndarray) -> np.ndarray:
        n, c = activations.shape[0], activations.shape[-1]
        keep = min(c, self.channels or c)
        variance = activations.reshape(n, -1, c).var(axis=1)
        return np.sort(np.argsort(-variance, axis=1, kind="stable")[:, :keep], axis=1)

    def recorded_options(self) -> dict:
        return {"scorecam_channels": self.channels}


@dataclass(frozen=True)
class InputResolutionMethod(Method):
    """A method whose maps are at the model's input resolution, from evidence at the input
    (:class:`InputNeeds`): ``input_formula`` turns it into raw maps ``(n, H, W)``. With a layer
    ``formula`` too (guided Grad-CAM), the layer map, normalised and upsampled to the input,
    multiplies the input map; without one (``formula=None``) the target layer plays no part."""

    input_formula: Callable[[np.ndarray], np.ndarray] | None = None
    input_needs: InputNeeds = InputNeeds.GUIDED_GRADIENTS

    def __post_init__(self):
        if self.input_formula is None:
            raise ValueError(f"{self.name}: an input-resolution method needs an input formula")
        if self.formula is None:  # nothing asked of the target layer beyond the forward pass
            object.__setattr__(self, "needs", Needs.ACTIVATIONS)

    def input_map(self, evidence: np.ndarray, layer_maps: np.ndarray | None = None):
        """Raw maps ``(n, H, W)`` from the input evidence, times ``layer_maps`` (normalised,
        upsampled to the input) when the method has a layer formula."""
        raw = self.input_formula(evidence)
        return raw if layer_maps is None else raw * layer_maps


def _channel_weighted(activations: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Activations scaled per image and channel by ``weights`` (n, channels)."""
    return activations * weights[:, None, None, :]


def gradcam(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017, arXiv:1610.02391, eq. 1-2).

    ``alpha_k = (1/Z) sum_ij dy/dA_ij^k``: channel weights are the spatial mean of the gradient.
    """
    return _channel_weighted(activations, gradients.mean(axis=(1, 2)))


def gradcam_plus_plus(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """Grad-CAM++ (Chattopadhay et al. 2018, arXiv:1710.11063, eq. 19 with an exponential score).

    With ``S = exp(y)`` and a piecewise-linear network, the second and third derivatives of S
    are ``exp(y) g^2`` and ``exp(y) g^3`` (``g = dy/dA``), so the exponentials cancel:
    ``a_ij^k = g^2 / (2 g^2 + sum_ab A_ab^k g^3)`` and ``w_k = sum_ij a_ij^k ReLU(g_ij^k)``.
    """
    g2 = gradients**2
    return _plus_plus_weighted(activations, gradients, g2, g2 * gradients)


def _plus_plus_weighted(activations, g1, g2, g3) -> np.ndarray:
    """Grad-CAM++'s weighting from the gradient's first three powers (or their averages)."""
    sums = activations.sum(axis=(1, 2), keepdims=True)
    denominator = 2.0 * g2 + sums * g3
    alpha = np.where(np.abs(denominator) > _EPS, g2 / np.where(denominator == 0, 1, denominator), 0)
    weights = (alpha * np.maximum(g1, 0.0)).sum(axis=(1, 2))
    return _channel_weighted(activations, weights)


def xgradcam(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """XGrad-CAM (Fu et al. 2020, arXiv:2008.02312, eq. 14).

    ``w_k = sum_ij (A_ij^k / sum_ab A_ab^k) dy/dA_ij^k``: gradients averaged with the channel's
    own activations as weights.
    """
    sums = activations.sum(axis=(1, 2), keepdims=True)
    share = activations / np.where(np.abs(sums) > _EPS, sums, np.inf)
    return _channel_weighted(activations, (share * gradients).sum(axis=(1, 2)))


def hirescam(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """HiResCAM (Draelos & Carin 2020, arXiv:2011.08891, eq. 4).

    Element-wise ``dy/dA_ij^k * A_ij^k``, summed over channels: no spatial averaging, so the map
    shows exactly where the gradient and the activations agree.
    """
    return gradients * activations


def layercam(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """LayerCAM (Jiang et al. 2021, IEEE TIP 30, eq. 5-6).

    Element-wise ``ReLU(dy/dA_ij^k) * A_ij^k``: every location keeps its own positive gradient,
    which keeps maps meaningful on shallow, high-resolution layers too.
    """
    return np.maximum(gradients, 0.0) * activations


def first_component(values: np.ndarray) -> np.ndarray:
    """Per image, the projection of the (h·w, channels) matrix on its first principal component.

    As in the Eigen-CAM paper (eq. 3-4): the SVD of the activation matrix itself, not centred,
    so a rank-1 tensor ``u ⊗ v`` projects to ``u`` (times ``|v|``). The sign of an SVD is
    arbitrary: it is set so the result correlates positively with the channel sum. Returns
    ``(n, height, width)``.
    """
    n, height, width, channels = values.shape
    matrices = values.reshape(n, -1, channels).astype(np.float64)
    out = np.zeros((n, height * width), dtype=np.float64)
    for i, matrix in enumerate(matrices):
        if not np.any(matrix):
            continue
        _, _, vt = np.linalg.svd(matrix, full_matrices=False)
        projection = matrix @ vt[0]
        if np.dot(projection, matrix.sum(axis=1)) < 0:
            projection = -projection
        out[i] = projection
    return out.reshape(n, height, width)


def eigencam(activations: np.ndarray) -> np.ndarray:
    """Eigen-CAM (Muhammad & Yeasin 2020, arXiv:2008.00299, eq. 3-4): gradient-free.

    The map is the activations' first principal component, sign-corrected: the activations are
    returned as they are and :class:`Method` projects them (``principal_component``).
    """
    return activations


def scorecam(activations: np.ndarray, channel_scores: np.ndarray) -> np.ndarray:
    """Score-CAM (Wang et al. 2020, arXiv:1910.01279, eq. 6-8).

    ``channel_scores`` (n, channels) are the target scores of the input masked by each channel's
    upsampled, min-max normalised activation map (channels not evaluated: ``-inf``); the weights
    are their softmax over channels.
    """
    finite = np.isfinite(channel_scores)
    shifted = np.where(finite, channel_scores, -np.inf)
    shifted = shifted - np.max(np.where(finite, shifted, -np.inf), axis=1, keepdims=True)
    weights = np.where(finite, np.exp(shifted), 0.0)
    weights = weights / np.maximum(weights.sum(axis=1, keepdims=True), _EPS)
    return _channel_weighted(activations, weights)


def ablationcam(activations: np.ndarray, channel_scores: np.ndarray) -> np.ndarray:
    """Ablation-CAM (Desai & Ramaswamy 2020, WACV, eq. 3).

    ``channel_scores`` (n, channels + 1): column 0 is the unablated score ``y``, column ``k + 1``
    the score with channel k zeroed; ``w_k = (y - y_k) / y``.
    """
    baseline = channel_scores[:, :1]
    drops = baseline - channel_scores[:, 1:]
    denominator = np.where(np.abs(baseline) > _EPS, baseline, 1.0)
    return _channel_weighted(activations, drops / denominator)

# --------------------------------------------------------------------------- more methods (A)


def image_keys(images: np.ndarray) -> np.ndarray:
    """One integer per image from its float32 bytes: the seed of a method's random draws, so an
    image gets the same draws whatever batch it is in, and wherever in it."""
    rows = np.ascontiguousarray(images, dtype=np.float32)
    digests = (hashlib.blake2b(row.tobytes(), digest_size=8).digest() for row in rows)
    return np.array([int.from_bytes(d, "little") >> 1 for d in digests], dtype=np.int64)


def _rng(seed: int, *keys) -> np.random.Generator:
    return np.random.default_rng([int(seed), *(int(k) for k in keys)])


def class_activation_map(activations: np.ndarray, class_weights: np.ndarray) -> np.ndarray:
    """CAM (Zhou et al. 2016, arXiv:1512.04150, eq. 2): ``M_c = sum_k w_k^c A_k``, ``w^c`` the
    classifier's weights of class c on the globally average-pooled channels (``(n, channels)``)."""
    return _channel_weighted(activations, class_weights)


def gradcam_elementwise(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """Grad-CAM element-wise (pytorch-grad-cam's GradCAMElementWise): ``ReLU(dy/dA ⊙ A)`` per
    channel before the channel sum, so negative evidence never cancels positive evidence."""
    return np.maximum(gradients * activations, 0.0)


KERNELS = ("sigmoid", "rbf", "poly", "linear", "cosine")


def _gram(x: np.ndarray, kernel: str, gamma: float, coef0: float) -> np.ndarray:
    """The kernel matrix of the rows of ``x`` (scikit-learn's kernel definitions, degree 3)."""
    dot = x @ x.T
    if kernel == "linear":
        return dot
    if kernel == "sigmoid":
        return np.tanh(gamma * dot + coef0)
    if kernel == "poly":
        return (gamma * dot + coef0) ** 3
    if kernel == "cosine":
        norms = np.sqrt(np.maximum(np.diag(dot), _EPS))
        return dot / np.outer(norms, norms)
    squared = np.diag(dot)
    return np.exp(-gamma * np.maximum(squared[:, None] + squared[None, :] - 2 * dot, 0.0))


def kernel_pca_component(activations: np.ndarray, kernel: str = "sigmoid",
                         gamma: float | None = None, coef0: float = 1.0) -> np.ndarray:
    """KPCA-CAM (Karmani et al. 2024, arXiv:2410.00267): Eigen-CAM with kernel PCA.

    Per image, the positions' channel vectors (centred over positions) are the samples; the
    kernel matrix is centred in feature space and the map is the first kernel principal
    component (top eigenvector times the square root of its eigenvalue), as scikit-learn's
    ``KernelPCA(n_components=1)`` used by pytorch-grad-cam's KPCA_CAM. ``gamma`` defaults to
    1 / channels. The component's sign is arbitrary: it is set so the map correlates positively
    with the channel sum (as :func:`first_component`). Returns ``(n, h, w, 1)``: the map as one
    "weighted channel".
    """
    n, height, width, channels = activations.shape
    gamma = 1.0 / channels if gamma is None else gamma
    out = np.zeros((n, height * width))
    for i, matrix in enumerate(activations.reshape(n, -1, channels).astype(np.float64)):
        gram = _gram(matrix - matrix.mean(axis=0), kernel, gamma, coef0)
        centred = gram - gram.mean(axis=0) - gram.mean(axis=1)[:, None] + gram.mean()
        values, vectors = np.linalg.eigh(centred)
        if values[-1] <= _EPS:
            continue
        component = vectors[:, -1] * np.sqrt(values[-1])
        if np.dot(component, matrix.sum(axis=1)) < 0:
            component = -component
        out[i] = component
    return out.reshape(n, height, width, 1)


def fem(activations: np.ndarray, k: float = 2.0) -> np.ndarray:
    """FEM (Fuad et al. 2020, IPTA; Bourjade et al.): a channel's weight is the share of its
    positions above its own ``mean + k · std`` (the k-sigma rule; std over positions)."""
    mean = activations.mean(axis=(1, 2), keepdims=True)
    std = activations.std(axis=(1, 2), keepdims=True)
    return _channel_weighted(activations, (activations > mean + k * std).mean(axis=(1, 2)))


def random_channels(activations: np.ndarray, keys, seed: int = 0) -> np.ndarray:
    """Random-CAM (pytorch-grad-cam's RandomCAM): channel weights uniform in [-1, 1), drawn
    from ``seed`` and each row's ``keys`` (its image): a baseline that explains nothing."""
    c = activations.shape[-1]
    weights = np.stack([_rng(seed, key).uniform(-1.0, 1.0, c) for key in keys])
    return _channel_weighted(activations, weights)


def smooth_gradcam_plus_plus(activations: np.ndarray, noisy_gradients: np.ndarray) -> np.ndarray:
    """Smooth Grad-CAM++ (Omeiza et al. 2019, arXiv:1908.01224), as torch-cam computes it.

    ``noisy_gradients`` ``(n, samples, h, w, c)``: the gradients of noisy copies of the input.
    Grad-CAM++'s α uses their averaged second and third powers with the clean activations;
    the weights sum α · ReLU(averaged gradient).
    """
    g = noisy_gradients.astype(np.float64)
    return _plus_plus_weighted(activations, g.mean(axis=1), (g**2).mean(axis=1),
                               (g**3).mean(axis=1))


def _check(name: str, condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(f"{name}: {message}")


def _check_sampling(method) -> None:
    """The options of a method that draws ``samples`` noisy copies."""
    _check(method.name, method.samples >= 1, f"samples must be at least 1, not {method.samples}")
    _check(method.name, method.noise >= 0, f"noise must be at least 0, not {method.noise}")
    _check(method.name, method.seed >= 0, f"seed must be at least 0, not {method.seed}")


@dataclass(frozen=True)
class KernelPCACAM(Method):
    """KPCA-CAM with its kernel (:data:`KERNELS`), ``gamma`` (None: 1 / channels), ``coef0``."""

    needs: Needs = Needs.ACTIVATIONS
    kernel: str = "sigmoid"
    gamma: float | None = None
    coef0: float = 1.0

    def __post_init__(self):
        _check(self.name, self.kernel in KERNELS,
               f"kernel must be one of {', '.join(KERNELS)}, not {self.kernel!r}")

    def formula_options(self) -> dict:
        return {"kernel": self.kernel, "gamma": self.gamma, "coef0": self.coef0}


@dataclass(frozen=True)
class FEM(Method):
    """FEM with its ``k`` (default 2, as the paper and pytorch-grad-cam)."""

    needs: Needs = Needs.ACTIVATIONS
    k: float = 2.0

    def formula_options(self) -> dict:
        return {"k": self.k}


@dataclass(frozen=True)
class RandomCAM(Method):
    """Random-CAM: reproducible (``seed``), and an image's draws do not depend on its batch."""

    needs: Needs = Needs.ACTIVATIONS
    seeded: bool = True
    seed: int = 0

    def __post_init__(self):
        _check(self.name, self.seed >= 0, f"seed must be at least 0, not {self.seed}")

    def formula_options(self) -> dict:
        return {"seed": self.seed}


@dataclass(frozen=True)
class NoisyGradientMethod(Method):
    """A method on the gradients of ``samples`` noisy copies of each image: Gaussian noise of
    standard deviation ``noise`` × the image's value range (max - min; SmoothGrad's
    convention, so it fits every preprocessing), drawn from ``seed`` and the image's bytes."""

    needs: Needs = Needs.NOISY_GRADIENTS
    samples: int = 4
    noise: float = 0.15
    seed: int = 0

    def __post_init__(self):
        _check_sampling(self)

    def noisy_copies(self, images: np.ndarray, keys: np.ndarray):
        """``samples`` noisy batches, one at a time, each shaped like ``images``."""
        rngs = [_rng(self.seed, key) for key in keys]
        spans = (images.max(axis=(1, 2, 3)) - images.min(axis=(1, 2, 3))) * self.noise
        for _ in range(self.samples):
            noise = np.stack([rng.standard_normal(images.shape[1:]) for rng in rngs])
            yield (images + noise * spans[:, None, None, None]).astype(np.float32)

    def recorded_options(self) -> dict:
        return {"samples": self.samples, "noise": self.noise, "seed": self.seed}


@dataclass(frozen=True)
class SmoothedScoreCAM(ScoreCAM):
    """SS-CAM (Wang et al. 2020, arXiv:2006.14255; torch-cam's SSCAM): each channel's score
    is the mean over ``samples`` draws of the input masked by its normalised map plus Gaussian
    noise of std ``noise`` (35 and 2.0, as torch-cam), drawn from ``seed``, the image and the
    channel."""

    samples: int = 35
    noise: float = 2.0
    seed: int = 0

    def __post_init__(self):
        super().__post_init__()
        _check_sampling(self)

    def masked_inputs(self, images, masks, keys):
        rngs = [_rng(self.seed, *key) for key in keys]
        for _ in range(self.samples):
            noise = np.stack([rng.standard_normal(masks.shape[1:]) for rng in rngs])
            yield images * (masks + self.noise * noise)

    def recorded_options(self) -> dict:
        return {**super().recorded_options(), "samples": self.samples, "noise": self.noise,
                "seed": self.seed}


@dataclass(frozen=True)
class IntegratedScoreCAM(ScoreCAM):
    """IS-CAM (Naidu et al. 2020, arXiv:2010.03023; torch-cam's ISCAM): each channel's score is
    the mean over ``samples`` (10) of the scores of the masked input scaled by the cumulative
    coefficients ``sum_{j<=s} j / samples``, s = 1..samples, as torch-cam computes them."""

    samples: int = 10

    def __post_init__(self):
        super().__post_init__()
        _check(self.name, self.samples >= 1, f"samples must be at least 1, not {self.samples}")

    def masked_inputs(self, images, masks, keys):
        coefficient = 0.0
        for step in range(1, self.samples + 1):
            coefficient += step / self.samples
            yield images * masks * coefficient

    def recorded_options(self) -> dict:
        return {**super().recorded_options(), "samples": self.samples}


@dataclass(frozen=True)
class FinerCAM(Method):
    """Finer-CAM (Zhang et al. 2025, CVPR; pytorch-grad-cam's FinerCAM): a gradient ``base``
    method explaining ``sum_j (y_t - alpha y_j)`` over the ``compared`` classes whose logits are
    nearest the target's (|y_j - y_t| smallest, the target excluded): what sets the target
    apart from the classes it is most easily confused with."""

    base: str = "gradcam"
    alpha: float = 1.0
    compared: int = 3

    def configure(self, **options) -> Method:
        method = super().configure(**options)
        _check(self.name, method.compared >= 1,
               f"compared must be at least 1, not {method.compared}")
        base = get_method(method.base)
        _check(self.name, base.needs is Needs.GRADIENTS and not isinstance(base, FinerCAM)
               and base.input_needs is None,  # only a layer formula is taken from the base
               f"the base method must be a gradient method, not {base.name!r}")
        if (base.name, base.formula, base.principal_component) == (
                method.base, method.formula, method.principal_component):
            return method
        return dataclasses.replace(method, base=base.name, formula=base.formula,
                                   principal_component=base.principal_component)

    def explained_scores(self, logits, targets, scores):
        from keras import ops

        classes = logits.shape[-1]
        m = min(self.compared, classes - 1)
        if m < 1:
            return scores
        rows = ops.expand_dims(logits, 1) + ops.zeros_like(ops.expand_dims(scores, -1))
        distance = ops.abs(rows - ops.expand_dims(scores, -1))  # (n, k, classes)
        distance = ops.where(ops.one_hot(targets, classes) > 0, float("inf"), distance)
        _, nearest = ops.top_k(-distance, m)
        compared = ops.take_along_axis(rows, nearest, axis=-1)
        return m * scores - self.alpha * ops.sum(compared, axis=-1)

    def recorded_options(self) -> dict:
        return {"base": self.base, "alpha": self.alpha, "compared": self.compared}


# --------------------------------------------------------------------------- second order, input


def shapleycam(activations: np.ndarray, evidence: np.ndarray) -> np.ndarray:
    """ShapleyCAM (Cai et al. 2025, arXiv:2501.06261, eq. 12; pytorch-grad-cam's ShapleyCAM).

    ``evidence[..., 0]`` is the gradient ``g = ds/dA`` and ``evidence[..., 1]`` the
    Hessian-vector product ``H A = d(g · A)/dA`` (A held fixed) of the ReST score
    ``s = y_c + log p_c``; the second-order Taylor estimate of each channel's Shapley value
    gives ``w_k = mean_ij (g - H A / 2)_ij^k``.
    """
    gradients, products = evidence[..., 0], evidence[..., 1]
    return _channel_weighted(activations, (gradients - 0.5 * products).mean(axis=(1, 2)))


def fullgrad_psi(values, xp=np):
    """FullGrad's post-processing ψ of one layer's bias-gradient (or input-gradient × input)
    tensor ``(n, h, w, c)``, before upsampling: absolute value, min-max rescaled to [0, 1] per
    image over the whole tensor (as the authors' code does), summed over channels: ``(n, h, w)``.

    ``xp`` is the array namespace (numpy, or ``tensorflow.experimental.numpy`` in the engine's
    graph, so only ``(n, h, w)`` maps leave it).
    """
    values = xp.abs(values)
    low = xp.min(values, axis=(1, 2, 3), keepdims=True)
    span = xp.max(values, axis=(1, 2, 3), keepdims=True) - low
    return xp.sum((values - low) / (span + 1e-6), axis=-1)


def fullgrad(evidence: np.ndarray) -> np.ndarray:
    """FullGrad (Srinivas & Fleuret 2019, arXiv:1905.00780, eq. 5): ``evidence[..., 0]`` is
    ψ(input-gradient ⊙ input), ``evidence[..., 1]`` the sum over every conv and batch-norm
    layer of ψ(bias-gradient map) upsampled to the input; the map is their sum."""
    return evidence.sum(axis=-1)


def guided_backprop(gradients: np.ndarray) -> np.ndarray:
    """Guided backpropagation (Springenberg et al. 2015, arXiv:1412.6806, fig. 1): the input
    gradient with every ReLU passing back only positive gradients where its input was positive.
    The signed ``(n, H, W, channels)`` gradient becomes a map by its largest magnitude over
    the colour channels (as saliency maps do, Simonyan et al. 2014)."""
    return np.abs(gradients).max(axis=-1)


@dataclass(frozen=True)
class AttentionMethod(Method):
    """A transformer method: a relevance per token from the attention probabilities of every
    ``MultiHeadAttention`` layer (and their gradients), not from a target layer's activations.
    Its formula returns ``(n, tokens)``; the engine's token adapter makes the map."""

    discard_ratio: float = 0.0  # rollout: drop the lowest attentions of each layer
    head_fusion: str = "mean"  # rollout: how the heads are combined

    def __post_init__(self):
        from camcli.attention import HEAD_FUSIONS

        if not 0.0 <= self.discard_ratio < 1.0:
            raise ValueError(f"--discard-ratio must be in [0, 1), not {self.discard_ratio}")
        if self.head_fusion not in HEAD_FUSIONS:
            raise ValueError(f"--head-fusion must be one of {', '.join(HEAD_FUSIONS)}")

    def cam(self, attentions, gradients=None, eigen_smooth: bool = False) -> np.ndarray:
        if self.needs is Needs.ATTENTION:
            return self.formula(attentions, self.head_fusion, self.discard_ratio)
        return self.formula(attentions, gradients)

    def recorded_options(self) -> dict:
        if self.needs is Needs.ATTENTION:
            return {"discard_ratio": self.discard_ratio, "head_fusion": self.head_fusion}
        return {}


def _attention_methods() -> tuple[Method, ...]:
    from camcli import attention

    return (
        AttentionMethod("rollout", attention.rollout, "Abnar & Zuidema 2020, arXiv:2005.00928",
                        Needs.ATTENTION, class_discriminative=False),
        AttentionMethod("grad-rollout", attention.chefer, "Chefer et al. 2021, ICCV",
                        Needs.ATTENTION_GRADIENTS),
        AttentionMethod("legrad", attention.legrad,
                        "Bousselham et al. 2025, ICCV, arXiv:2404.03214",
                        Needs.ATTENTION_GRADIENTS),
    )


def combine(weighted: np.ndarray, eigen_smooth: bool = False) -> np.ndarray:
    """Raw maps ``(n, h, w)`` from weighted activations: ReLU of the channel sum, or with
    ``eigen_smooth`` ReLU of their first principal component."""
    summed = first_component(weighted) if eigen_smooth else weighted.sum(axis=-1)
    return np.maximum(summed, 0.0)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("gradcam", gradcam, "Selvaraju et al. 2017, arXiv:1610.02391"),
        Method("gradcam++", gradcam_plus_plus, "Chattopadhay et al. 2018, arXiv:1710.11063"),
        Method("xgradcam", xgradcam, "Fu et al. 2020, arXiv:2008.02312"),
        Method("hirescam", hirescam, "Draelos & Carin 2020, arXiv:2011.08891"),
        Method("layercam", layercam, "Jiang et al. 2021, IEEE TIP 30:5875"),
        Method("eigencam", eigencam, "Muhammad & Yeasin 2020, arXiv:2008.00299",
               Needs.ACTIVATIONS, principal_component=True, class_discriminative=False),
        ScoreCAM("scorecam", scorecam, "Wang et al. 2020, arXiv:1910.01279"),
        ChannelScoringMethod("ablationcam", ablationcam, "Desai & Ramaswamy 2020, WACV",
                             Needs.ABLATION_SCORES),
        # issue 24, part A
        Method("cam", class_activation_map, "Zhou et al. 2016, arXiv:1512.04150",
               Needs.HEAD_WEIGHTS),
        Method("gradcam-elementwise", gradcam_elementwise,
               "Gildenblat et al. 2021, pytorch-grad-cam GradCAMElementWise"),
        Method("eigengradcam", hirescam, "Gildenblat et al. 2021, pytorch-grad-cam EigenGradCAM",
               principal_component=True),
        KernelPCACAM("kpcacam", kernel_pca_component, "Karmani et al. 2024, arXiv:2410.00267",
                     class_discriminative=False),
        FEM("fem", fem, "Fuad et al. 2020, IPTA; Bourjade et al.", class_discriminative=False),
        FinerCAM("finercam", gradcam, "Zhang et al. 2025, CVPR (Finer-CAM)"),
        NoisyGradientMethod("smoothgradcam++", smooth_gradcam_plus_plus,
                            "Omeiza et al. 2019, arXiv:1908.01224"),
        SmoothedScoreCAM("sscam", scorecam, "Wang et al. 2020, arXiv:2006.14255"),
        IntegratedScoreCAM("iscam", scorecam, "Naidu et al. 2020, arXiv:2010.03023"),
        RandomCAM("randomcam", random_channels,
                  "Gildenblat et al. 2021, pytorch-grad-cam RandomCAM", class_discriminative=False),
        # second order and input resolution (issue 24, part B)
        Method("shapleycam", shapleycam, "Cai et al. 2025, arXiv:2501.06261",
               Needs.HESSIAN_VECTOR_PRODUCTS),
        InputResolutionMethod("fullgrad", None, "Srinivas & Fleuret 2019, arXiv:1905.00780",
                              input_formula=fullgrad, input_needs=InputNeeds.FULL_GRADIENTS),
        InputResolutionMethod("guided-backprop", None, "Springenberg et al. 2015, "
                              "arXiv:1412.6806", class_discriminative=False,
                              input_formula=guided_backprop),
        InputResolutionMethod("guided-gradcam", gradcam, "Selvaraju et al. 2017, "
                              "arXiv:1610.02391", input_formula=guided_backprop),
        # issue 22: vision transformers
        *_attention_methods(),
    )
}


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "").replace("-", "").replace("plusplus", "++")


def get_method(name: str, **options) -> Method:
    """The method called ``name`` (case-insensitive, ``-``/``_`` ignored, ``gradcampp`` or
    ``gradcam_plus_plus`` for ``gradcam++``), with its own ``options`` set (see
    :meth:`Method.configure`); a usage error lists the known ones or says what is wrong."""
    from camcli.errors import UnknownNameError, UsageError

    key = _key(name)
    key = {"gradcampp": "gradcam++", "smoothgradcampp": "smoothgradcam++"}.get(key, key)
    for method in METHODS.values():
        if _key(method.name) == key:
            try:
                return method.configure(**options)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
    raise UnknownNameError("method", name, sorted(METHODS))


#: Options with flags of their own (``--scorecam-batch``, ``--scorecam-channels``).
_FLAGGED = {"chunk_size", "channels", "discard_ratio", "head_fusion"}


def parse_method_options(name: str, options) -> dict:
    """A method's own options from ``NAME=VALUE`` strings (``--method-option``) or a dict:
    each name must be one of the method's options, each string value is converted to the type
    of its default (``none`` for none); a usage error says what is wrong."""
    from camcli.errors import UsageError

    method = get_method(name)
    own = {f.name: getattr(method, f.name) for f in dataclasses.fields(method)}
    own = {k: v for k, v in own.items() if k not in _BASE_FIELDS | _FLAGGED}
    pairs = options.items() if isinstance(options, dict) else (
        item.partition("=")[::2] for item in options or ())
    parsed = {}
    for key, value in pairs:
        key = key.strip().replace("-", "_")
        if key not in own:
            known = ", ".join(own) or "none"
            raise UsageError(f"--method-option {key}: not an option of {method.name} "
                             f"(its options: {known})")
        parsed[key] = _converted(method.name, key, value, own[key])
    return parsed


def _converted(method: str, key: str, value, default):
    if not isinstance(value, str):
        return value
    from camcli.errors import UsageError

    if value.strip().lower() == "none":
        return None
    kind = float if default is None else type(default)
    try:
        return kind(value)
    except ValueError:
        raise UsageError(
            f"--method-option {key}={value}: {method} wants a {kind.__name__}") from None


def method_names() -> str:
    """``gradcam, gradcam++, ...``: the table's names, for help texts."""
    return ", ".join(METHODS)
