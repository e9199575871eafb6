"""``--precision``: which arithmetic the network runs in, and whether this machine runs it fast.

float32 (the default) gives exactly reproducible maps. bfloat16 and float16 run the network
under Keras' mixed policies (``mixed_bfloat16``, ``mixed_float16``): weights stay float32, each
layer computes in the reduced type. The explained score, the softmax and the maps' arithmetic
stay float32 (the engine casts the logits and the captured activations and gradients).

Reduced precision is fast only where something computes in it: a GPU, or a CPU whose flags
(``/proc/cpuinfo``) say so — AVX-512 BF16 or AMX-BF16 for bfloat16, AVX512-FP16 or AMX-FP16 for
float16. Without them it is emulated and slower than float32. float16 is slower than float32 on
a CPU even with AVX512-FP16: TensorFlow's CPU kernels do not use it well (measured by
``benchmarks/bench_precision.py``: ResNet50's forward pass at 0.35x float32, while bfloat16 ran
at 1.4-2.3x on the same CPU). Either way camcli warns once, saying which case it is. No
TensorFlow import here: :func:`slow_reason` is pure, so it is tested on given flag sets.
"""

from __future__ import annotations

import warnings
from pathlib import Path

#: ``--precision`` value -> the Keras dtype policy the model is built under.
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
PRECISIONS = tuple(POLICIES)
DEFAULT = "float32"
#: Per reduced precision: the CPU flags (``/proc/cpuinfo``) of its native arithmetic (any one
#: suffices), and how the warning names them.
NATIVE_CPU_FLAGS = {
    "bfloat16": (frozenset({"avx512_bf16", "amx_bf16"}), "AVX-512 BF16 or AMX-BF16"),
    "float16": (frozenset({"avx512_fp16", "amx_fp16"}), "AVX512-FP16 or AMX-FP16"),
}
#: Precisions TensorFlow's CPU kernels run slower than float32 even where the CPU computes in
#: them (see the module doc).
SLOW_ON_ANY_CPU = frozenset({"float16"})

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
    if precision not in NATIVE_CPU_FLAGS or gpus:
        return None
    wanted, names = NATIVE_CPU_FLAGS[precision]
    native = sorted(wanted & set(cpu_flags))
    if not native:
        return (f"--precision {precision}: this CPU has no {names} and there is no GPU, "
                f"so {precision} is emulated and slower than float32")
    if precision not in SLOW_ON_ANY_CPU:
        return None
    fast = [other for other in NATIVE_CPU_FLAGS
            if other not in SLOW_ON_ANY_CPU and slow_reason(other, cpu_flags, gpus) is None]
    hint = f" (--precision {fast[0]} is fast on this CPU)" if fast else ""
    return (f"--precision {precision}: there is no GPU, and TensorFlow runs {precision} slower "
            f"than float32 on a CPU even with {native[0]}{hint}")

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
