"""Importing TensorFlow without its C++ start-up chatter.

TensorFlow's native code logs several lines to file descriptor 2 at import and at device set-up
(oneDNN notices, missing CUDA drivers) before Python's logging or ``TF_CPP_MIN_LOG_LEVEL`` can
intervene. A command-line tool whose stderr carries ``path: reason`` lines for failed inputs
cannot have that noise, so the CLI imports TensorFlow through :func:`import_quietly`.
"""

from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def _stderr_silenced():
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def import_quietly():
    """Import TensorFlow and Keras and initialise the CPU device with fd 2 silenced."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _stderr_silenced():
        import keras  # noqa: F401
        import tensorflow as tf

        tf.config.list_logical_devices()
    return tf
