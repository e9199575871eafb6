"""CAM methods: each is a strategy object holding its formula, what it needs and its options.

Every formula takes ``activations`` shaped ``(n, height, width, channels)`` and the *evidence*
its method asks the engine for, and returns the *weighted activations*, same shape. The map is
then ``ReLU(sum over channels)`` (:func:`combine`), or, with ``eigen_smooth``, ``ReLU`` of their
first principal component (:func:`first_component`), as in pytorch-grad-cam.

What a method needs is declared once, on the method (:class:`Needs`): the gradient of each
image's own target score with respect to its own activations, nothing beyond the activations,
or channel scores from extra model calls — the target scores of the input masked by each
channel (Score-CAM) or of the network with each channel ablated (Ablation-CAM). The engine asks
the method and computes exactly that; it never looks at a method's name. A channel-scoring
method also carries its own options (how many masked inputs per model call, which channels).

Adding a method: write its formula below and add one row to :data:`METHODS`. The CLI's
``--method`` help, the README's table (checked by a test) and the tests' method lists all read
that table. Formulas know nothing of models or files, so they are tested on hand-made arrays.
Normalisation to [0, 1] lives in :mod:`camcli.heatmaps`.
"""

from __future__ import annotations

import dataclasses
import enum
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

    @property
    def needs_gradients(self) -> bool:
        return self.needs is Needs.GRADIENTS

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
        """The method's own options that change the maps, as recorded in every record."""
        return {}

    def cam(self, activations, evidence=None, eigen_smooth: bool = False) -> np.ndarray:
        """Raw (unnormalised) maps ``(n, h, w)`` from the activations and what :attr:`needs`
        asked for (None for gradient-free methods)."""
        if self.needs is Needs.ACTIVATIONS:
            weighted = self.formula(activations)
        else:
            weighted = self.formula(activations, evidence)
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
    g3 = g2 * gradients
    sums = activations.sum(axis=(1, 2), keepdims=True)
    denominator = 2.0 * g2 + sums * g3
    alpha = np.where(np.abs(denominator) > _EPS, g2 / np.where(denominator == 0, 1, denominator), 0)
    weights = (alpha * np.maximum(gradients, 0.0)).sum(axis=(1, 2))
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
               Needs.ACTIVATIONS, principal_component=True),
        ScoreCAM("scorecam", scorecam, "Wang et al. 2020, arXiv:1910.01279"),
        ChannelScoringMethod("ablationcam", ablationcam, "Desai & Ramaswamy 2020, WACV",
                             Needs.ABLATION_SCORES),
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
    key = {"gradcampp": "gradcam++"}.get(key, key)
    for method in METHODS.values():
        if _key(method.name) == key:
            try:
                return method.configure(**options)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
    raise UnknownNameError("method", name, sorted(METHODS))


def method_names() -> str:
    """``gradcam, gradcam++, ...``: the table's names, for help texts."""
    return ", ".join(METHODS)
