"""``--shard K/N`` and ``--shard auto``: which inputs belong to this run.

An input belongs to shard K of N when the SHA-1 digest of its key — its path as camcli lists it,
normalised (``./a/../b.jpg`` is ``b.jpg``), or its URL — taken as a number, is K - 1 modulo N.
That depends on nothing but the key: not the machine, not the order of the listing, not the
files added since. Every input lands in exactly one shard, so N runs with the same arguments,
from the same folder, cover every input exactly once with no coordinator.

``auto`` reads the index and count of a job array from the environment: Slurm
(``SLURM_ARRAY_TASK_ID``, ``SLURM_ARRAY_TASK_MIN``, ``SLURM_ARRAY_TASK_COUNT``, and
``SLURM_ARRAY_TASK_STEP`` when the array has a step) or a Kubernetes Indexed Job
(``JOB_COMPLETION_INDEX``, 0-based, with the count in ``CAMCLI_SHARD_COUNT``, which the Job sets
from its ``completions``).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from camcli.errors import UsageError

SLURM = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT")
KUBERNETES = ("JOB_COMPLETION_INDEX", "CAMCLI_SHARD_COUNT")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    def __post_init__(self):
        if self.count < 1 or not 1 <= self.index <= self.count:
            raise UsageError(
                f"--shard {self.index}/{self.count}: K must be between 1 and N (N at least 1)"
            )

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, key: str) -> bool:
        return digest(key) % self.count == self.index - 1


def key(path) -> str:
    """The key an input is sharded by: a URL as it is, a path normalised (not resolved)."""
    text = str(path)
    return text if "://" in text else os.path.normpath(text)


def digest(text: str) -> int:
    return int.from_bytes(hashlib.sha1(key(text).encode("utf-8")).digest()[:8], "big")


def select(shard: Shard | None, inputs: Iterable, stats=None) -> Iterator:
    """The inputs of ``shard`` (all of them when None), as they stream past; ``stats.listed``
    and ``stats.taken`` count them for the summary."""
    for item in inputs:
        if stats is not None:
            stats.listed += 1
        if shard is None or shard.owns(str(item)):
            if stats is not None:
                stats.taken += 1
            yield item


def parse(text: str | None, environ: Mapping[str, str] | None = None) -> Shard | None:
    """``"K/N"``, ``"auto"`` or None (no sharding)."""
    if text is None:
        return None
    text = text.strip()
    if text.lower() == "auto":
        return from_environment(os.environ if environ is None else environ)
    match = re.fullmatch(r"(\d+)\s*/\s*(\d+)", text)
    if not match:
        raise UsageError(f"--shard {text!r}: expected K/N (e.g. 1/4, K from 1 to N) or auto")
    return Shard(int(match[1]), int(match[2]))


def from_environment(environ: Mapping[str, str]) -> Shard:
    """The shard of this task of a Slurm job array or a Kubernetes Indexed Job."""
    if environ.get("SLURM_ARRAY_TASK_ID", "").strip():
        return _slurm(environ)
    if environ.get("JOB_COMPLETION_INDEX", "").strip():
        return _kubernetes(environ)
    raise UsageError(
        "--shard auto: no job array found in the environment (read "
        f"{', '.join(SLURM)} for Slurm and {', '.join(KUBERNETES)} for a Kubernetes "
        "Indexed Job); pass --shard K/N instead"
    )


def _slurm(environ: Mapping[str, str]) -> Shard:
    names = (*SLURM, "SLURM_ARRAY_TASK_STEP")
    task, first, count, step = (_integer(environ, name, name != names[3]) for name in names)
    step = step or 1
    offset = task - first
    if count < 1 or step < 1 or offset < 0 or offset % step or offset // step >= count:
        values = ", ".join(f"{name}={environ.get(name)}" for name in names if name in environ)
        raise UsageError(f"--shard auto: inconsistent Slurm array variables: {values}")
    return Shard(offset // step + 1, count)


def _kubernetes(environ: Mapping[str, str]) -> Shard:
    index = _integer(environ, "JOB_COMPLETION_INDEX", True)
    count = _integer(environ, "CAMCLI_SHARD_COUNT", False)
    if count is None:
        raise UsageError(
            "--shard auto: JOB_COMPLETION_INDEX is set but CAMCLI_SHARD_COUNT is not; set it "
            "to the Job's completions (see the README's Kubernetes example)"
        )
    if count < 1 or not 0 <= index < count:
        raise UsageError(
            f"--shard auto: inconsistent Kubernetes variables: JOB_COMPLETION_INDEX={index}, "
            f"CAMCLI_SHARD_COUNT={count} (the index must be below the count)"
        )
    return Shard(index + 1, count)


def _integer(environ: Mapping[str, str], name: str, required: bool) -> int | None:
    value = environ.get(name)
    if value is None or value.strip() == "":
        if required:
            raise UsageError(f"--shard auto: {name} is not set (read {', '.join(SLURM)})")
        return None
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"--shard auto: {name}={value!r} is not a whole number") from None
