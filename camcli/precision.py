"""``--precision``: which arithmetic the network runs in, and whether this machine runs it fast.

float32 (the default) gives exactly reproducible maps. bfloat16 and float16 run the network
under Keras' mixed policies (``mixed_bfloat16``, ``mixed_float16``): weights stay float32, each
layer computes in the reduced type. The explained score, the softmax and the maps' arithmetic
stay float32 (the engine casts the logits and the captured activations and gradients).

Reduced precision is fast only on hardware built for it: bfloat16 on a CPU with AVX-512 BF16 or
AMX (or on a GPU), float16 on a GPU. Elsewhere it is emulated and slower than float32, so camcli
warns once. No TensorFlow import here: :func:`slow_reason` is pure, so it is tested on given
flag sets.
"""

from __future__ import annotations

import warnings
from pathlib import Path

#: ``--precision`` value -> the Keras dtype policy the model is built under.
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
PRECISIONS = tuple(POLICIES)
DEFAULT = "float32"
#: CPU flags (``/proc/cpuinfo``) of native bfloat16 arithmetic.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


class SlowPrecisionWarning(RuntimeWarning):
    """The precision asked for has no fast hardware support on this machine."""


def check(precision: str) -> str:
    """``precision`` itself, or a UsageError naming the choices."""
    if precision not in POLICIES:
        from camcli.errors import UnknownNameError

        raise UnknownNameError("precision", precision, PRECISIONS)
    return precision


def slow_reason(precision: str, cpu_flags: frozenset[str] | set[str], gpus: int) -> str | None:
    """Why ``precision`` will be slow on a machine with these CPU flags and GPUs, or None."""
    if precision == "bfloat16" and not gpus and not BF16_CPU_FLAGS & set(cpu_flags):
        return ("--precision bfloat16: this CPU has no AVX-512 BF16 or AMX and there is no GPU, "
                "so bfloat16 is emulated and slower than float32")
    if precision == "float16" and not gpus:
        return "--precision float16: no GPU, so float16 is emulated and slower than float32"
    return None


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (Linux); empty where ``/proc/cpuinfo`` cannot be read."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, ARM
            return frozenset(value.split())
    return frozenset()


_warned: set[str] = set()


def warn_if_slow(precision: str) -> str | None:
    """Warn (once per process and precision) when ``precision`` will be slow here.

    Returns the reason, or None; the CLI prints it as its own warning line.
    """
    if precision == DEFAULT:
        return None
    import tensorflow as tf

    reason = slow_reason(precision, cpu_flags(), len(tf.config.list_physical_devices("GPU")))
    if reason and precision not in _warned:
        _warned.add(precision)
        warnings.warn(reason, SlowPrecisionWarning, stacklevel=3)
    return reason
