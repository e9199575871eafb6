"""Running a command while measuring its own peak memory.

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
