"""Target adapters: what turns a target layer's output into the ``(n, h, w, channels)`` grid every
CAM method, the renderer and the outputs work on.

- :class:`Spatial`: a convolutional layer's 4-D output is already that grid (identity).
- :class:`TokenGrid`: a transformer layer outputs tokens ``(n, tokens, channels)``; the prefix
  tokens (ViT: 1 class token; DeiT: class + distillation; registers) are dropped and the patch
  tokens reshaped, row-major, to the patch grid. Swin-like final tokens have no prefix.

This module is the one place that knows about tokens. The layout is inferred from the token count
and the input size alone (:func:`token_layout`): the fewest prefix tokens that leave a patch grid
whose stride divides the input, so any Keras model whose layer outputs tokens works, not only
keras-hub's.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Prefix tokens tried: class, distillation and a few register tokens.
MAX_PREFIX_TOKENS = 8


@dataclass(frozen=True)
class Spatial:
    """A 4-D feature map: used as it is."""

    shape: tuple  # (height, width, channels)
    kind = "spatial"

    def to_grid(self, output):
        return output

    def replacing_call(self, original, grid):
        """A ``call`` that returns ``grid`` as the layer's output (Ablation-CAM's tail)."""
        return lambda *args, **kwargs: grid

    def describe(self) -> dict:
        return {"kind": self.kind, "grid": list(self.shape[:2])}


@dataclass(frozen=True)
class TokenGrid:
    """Tokens ``(..., prefix + h*w, channels)`` <-> grid ``(..., h, w, channels)``."""

    prefix: int  # tokens before the patch tokens, dropped
    grid: tuple[int, int]  # (h, w) patch grid
    channels: int
    kind = "tokens"

    @property
    def shape(self) -> tuple:
        return (*self.grid, self.channels)

    @property
    def tokens(self) -> int:
        return self.prefix + self.grid[0] * self.grid[1]

    def to_grid(self, tokens):
        """Drop the prefix tokens and reshape the rest to the grid (numpy or tensors; any leading
        dimensions, e.g. (classes, images, tokens, channels) for stacked gradients)."""
        from keras import ops

        patches = tokens[..., self.prefix :, :]
        lead = tuple(ops.shape(tokens)[:-2])
        return ops.reshape(patches, (*lead, *self.grid, ops.shape(tokens)[-1]))

    def to_tokens(self, grid, prefix_tokens):
        """The inverse: ``prefix_tokens`` (n, prefix, c) then the grid's cells as tokens."""
        from keras import ops

        n, h, w, c = ops.shape(grid)
        patches = ops.reshape(grid, (n, h * w, c))
        return ops.concatenate([ops.cast(prefix_tokens, patches.dtype), patches], axis=1)

    def relevance_grid(self, relevance):
        """A per-token relevance ``(n, tokens)`` (e.g. the class token's attention row) as a map
        ``(n, h, w)`` over the patch grid."""
        return relevance[:, self.prefix :].reshape(-1, *self.grid)

    def replacing_call(self, original, grid):
        """A ``call`` that keeps the layer's own prefix tokens and puts ``grid``'s cells in
        place of its patch tokens (Ablation-CAM's tail)."""

        def call(*args, **kwargs):
            tokens = original(*args, **kwargs)
            return self.to_tokens(grid, tokens[:, : self.prefix])

        return call

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "grid": list(self.grid),
            "tokens": self.tokens,
            "prefix_tokens": self.prefix,
        }


def token_layout(tokens: int, channels: int, input_size: tuple[int, int]) -> TokenGrid | None:
    """The token layout of ``tokens`` tokens for an image of ``input_size`` (height, width):
    the fewest prefix tokens leaving ``h * w`` patch tokens with ``h = H / s``, ``w = W / s`` for
    an integer stride ``s``; None when there is no such layout (not image tokens)."""
    height, width = input_size
    for prefix in range(0, min(MAX_PREFIX_TOKENS, tokens - 1) + 1):
        patches = tokens - prefix
        for stride in range(1, min(height, width) + 1):
            if height % stride or width % stride:
                continue
            if (height // stride) * (width // stride) == patches:
                return TokenGrid(prefix, (height // stride, width // stride), channels)
    return None
