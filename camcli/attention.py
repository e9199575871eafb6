"""Attention methods for vision transformers: pure formulas on attention probabilities.

Each takes the attention probabilities of every ``MultiHeadAttention`` layer, stacked
``(n, layers, heads, tokens, tokens)`` (and, for Chefer's rule, their gradients with respect to
the explained score, same shape) and returns a relevance per token ``(n, tokens)``: the class
token's row (token 0). The target's adapter (:mod:`camcli.adapters`) turns it into a map over
the patch grid; these formulas know nothing of grids or models.
"""

from __future__ import annotations

import numpy as np

HEAD_FUSIONS = ("mean", "max", "min")


def fuse_heads(attention: np.ndarray, how: str = "mean") -> np.ndarray:
    """``(n, heads, t, t)`` -> ``(n, t, t)``: the heads' mean, max or min."""
    if how not in HEAD_FUSIONS:
        raise ValueError(f"head fusion must be one of {', '.join(HEAD_FUSIONS)}, not {how!r}")
    return getattr(attention, how)(axis=1)


def rollout(attentions: np.ndarray, head_fusion: str = "mean",
            discard_ratio: float = 0.0) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema 2020, arXiv:2005.00928, section 3).

    Per layer: heads fused, the lowest ``discard_ratio`` of each image's attentions set to zero
    (never the class token's attention to itself), the identity added for the residual path,
    rows normalised to sum to one; the layers multiplied in order. Returns the class token's row.
    """
    n, layers, _, tokens, _ = attentions.shape
    eye = np.eye(tokens)
    result = np.broadcast_to(eye, (n, tokens, tokens)).copy()
    for layer in range(layers):
        fused = fuse_heads(attentions[:, layer].astype(np.float64), head_fusion)
        if discard_ratio > 0:
            flat = fused.reshape(n, -1)  # a view: zeroing it zeroes ``fused``
            drop = int(flat.shape[1] * discard_ratio)
            lowest = np.argsort(flat, axis=1, kind="stable")[:, :drop]
            for i in range(n):
                flat[i, lowest[i][lowest[i] != 0]] = 0.0
        mixed = fused + eye
        mixed = mixed / mixed.sum(axis=-1, keepdims=True)
        result = mixed @ result
    return result[:, 0]


def chefer(attentions: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """Chefer, Gur & Wolf, ICCV 2021 ("Generic attention-model explainability", eq. 5-6).

    ``R = I``; per layer ``R += mean_heads(ReLU(dA ⊙ A)) · R``, where ``dA`` is the gradient
    of the explained score with respect to the attention probabilities. Returns the class token's
    row of ``R``.
    """
    n, layers, _, tokens, _ = attentions.shape
    result = np.broadcast_to(np.eye(tokens), (n, tokens, tokens)).copy()
    for layer in range(layers):
        weighted = np.maximum(gradients[:, layer] * attentions[:, layer], 0.0).mean(axis=1)
        result = result + weighted.astype(np.float64) @ result
    return result[:, 0]


def legrad(attentions: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """LeGrad (Bousselham et al., ICCV 2025, arXiv:2404.03214), on the gradient of the
    *final* explained score.

    Per layer ``l``: ``E^l = mean over heads and query rows (all of them, the class token's too,
    as the authors' code does) of ReLU(dA^l)``, where ``dA^l`` is
    the gradient of the explained score with respect to the layer's attention probabilities; a
    relevance per key token. The map is their mean over layers. The attention values themselves
    are not used: the gradient is the signal. The paper differentiates at each layer the score
    its own intermediate output gets through the head; here every layer's gradient is that of
    the network's final score (the two agree at the last layer). Returns ``(n, tokens)``.
    """
    del attentions  # the gradient alone is LeGrad's signal
    return np.maximum(gradients.astype(np.float64), 0.0).mean(axis=(2, 3)).mean(axis=1)
