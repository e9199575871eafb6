"""What a run knows and its records do not: which inputs failed, and why.

Records exist only for inputs that were explained. A run with failures and an ``--out-dir``
leaves one small JSON Lines file, ``OUT/camcli-failures/<UTC time>-<pid>.jsonl``, one line
``{"input": ..., "error": ...}`` per failed input, so ``camcli report OUT`` can show the
failures after the run (of every shard, when several runs write into folders it merges). A
later success of the same input supersedes a logged failure. Without ``--out-dir`` camcli writes
nothing beside the images but their outputs; ``camcli explain --report`` shows a run's failures
in any case.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from camcli.outputs import replace_atomically
from camcli.report.sources import FAILURES_DIR


def failure(name: str, error: str) -> dict:
    """One failed input as the report and the log hold it."""
    return {"name": str(name), "error": str(error)}


def write_failures(out_dir: Path, failures: list[dict]) -> Path | None:
    """Log ``failures`` (from :func:`failure`) under ``out_dir``; nothing when there are none."""
    if not failures:
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    path = Path(out_dir) / FAILURES_DIR / f"{stamp}-{os.getpid()}.jsonl"
    lines = (json.dumps({"input": f["name"], "error": f["error"]}, ensure_ascii=False) + "\n"
             for f in failures)
    replace_atomically(path, "".join(lines).encode("utf-8"))
    return path


def read_failures(data: bytes) -> list[dict]:
    """The failures of one log; lines that are not failure entries are ignored."""
    found = []
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            entry = json.loads(line)
            found.append(failure(entry["input"], entry["error"]))
        except (ValueError, KeyError, TypeError):
            continue
    return found
