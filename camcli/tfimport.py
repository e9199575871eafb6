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


def import_quietly(threads: int | None = None, quiet: bool = True):
    """Import TensorFlow and Keras and initialise the CPU device with fd 2 silenced.

    ``threads`` sets TensorFlow's intra- and inter-op thread pools; it must happen here, before
    the runtime starts, which is why the CLI routes its ``--threads`` option through this.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _stderr_silenced() if quiet else contextlib.nullcontext():
        import keras  # noqa: F401
        import tensorflow as tf

        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        tf.config.list_logical_devices()
    return tf
