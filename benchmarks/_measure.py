"""What the benchmarks share: a command's own peak memory, and the machine's ISA and load.

``wait4``'s ``ru_maxrss`` is no good for a child started from a large Python process: at exec,
Linux records the forked copy's high-water mark, i.e. the *parent's* size. ``VmHWM`` in
``/proc/PID/status`` restarts at exec, so it is polled while the child runs.
"""

from __future__ import annotations

import subprocess
import time


def _vm_hwm(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def run_measured(command: list[str], **popen) -> tuple[int, float, int, str]:
    """Run ``command``; return (exit code, wall seconds, peak RSS in bytes, stderr text)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               **popen)
    peak = 0
    while process.poll() is None:
        peak = max(peak, _vm_hwm(process.pid) or 0)
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    return process.returncode, seconds, peak, process.stderr.read().decode()


#: The instruction-set extensions that decide how fast the network runs, best first.
_ISA_FLAGS = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX-512 BF16"),
              ("avx512_fp16", "AVX-512 FP16"), ("avx512f", "AVX-512F"), ("avx2", "AVX2"))


def machine() -> str:
    """One line naming the CPU, its vector/matrix extensions and its cores, for every report."""
    import os

    from camcli.precision import cpu_flags

    flags = cpu_flags()
    name = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            name = next((line.split(":", 1)[1].strip() for line in cpuinfo
                         if line.startswith("model name")), name)
    except OSError:
        pass
    isa = ", ".join(label for flag, label in _ISA_FLAGS if flag in flags) or "no AVX2"
    return f"{name}; ISA: {isa}; {os.cpu_count()} CPUs"


def load() -> str:
    """The load average now, as ``uptime`` prints it: timings taken under load are noisy."""
    import os

    return "load average " + ", ".join(f"{value:.2f}" for value in os.getloadavg())


def bf16_native() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX): only there is a
    bfloat16 speed goal a goal; elsewhere the benchmark reports it and never fails."""
    from camcli.precision import cpu_flags, slow_reason

    return slow_reason("bfloat16", cpu_flags(), gpus=0) is None
