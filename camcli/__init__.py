"""camcli: explain image classifiers with class activation maps, batched.

``from camcli import explain`` gives the same pipeline the ``camcli explain`` command runs.
TensorFlow is imported only when a model is actually needed, so importing this package is fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Explainer", "ImageResult", "OutputOptions", "__version__", "explain"]


def __getattr__(name: str):
    # Lazy: the api module pulls in Pillow and numpy; the model code pulls in TensorFlow.
    if name in ("explain", "Explainer", "ImageResult", "OutputOptions"):
        from camcli import api

        return getattr(api, name)
    raise AttributeError(f"module 'camcli' has no attribute {name!r}")
