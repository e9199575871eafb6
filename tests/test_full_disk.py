"""Writes that fail for lack of space, through the real ``camcli`` command.

- A file-size limit (``RLIMIT_FSIZE``, so ``write`` fails with EFBIG): the inputs whose overlay
  exceeds it fail with that reason and leave nothing behind; the others are explained.
- A full disk (a 1 MiB tmpfs as ``--out-dir``): the run stops after a few inputs in a row fail,
  with one message, exit 1, no temporary or half-written files; once there is room,
  ``--skip-existing`` does exactly what is missing.

Random weights (``--weights none``) and a dead proxy: nothing is ever downloaded.
"""

from __future__ import annotations

import json
import re
import resource
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import SMALL_MODEL, WARNING, check_output_sets, run_explain
from cli_helpers import nonblank_lines as _lines
from PIL import Image

from camcli.runner import STOP_AFTER_FULL_WRITES

FILE_LIMIT = 200_000  # bytes: a noise overlay of 400x300 is ~360 kB, a flat one ~1 kB


def _noise(path: Path, size=(400, 300), seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, compress_level=1)


def _limit_file_size():  # a preexec_fn: in the child, before exec
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed


def test_a_file_size_limit_fails_only_the_inputs_too_large(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    big, small = [], []
    for i in range(6):  # alternate, so no streak stops the run
        _noise(folder / f"big{i}.png", seed=i)
        Image.new("RGB", (400, 300), (30, 90, 160)).save(folder / f"small{i}.png")
        big.append(f"in/big{i}.png")
        small.append(f"in/small{i}.png")
    order = [name for pair in zip(big, small, strict=True) for name in pair]
    run = run_explain(
        [*order, "--batch-size", "2", *SMALL_MODEL], tmp_path, preexec_fn=_limit_file_size
    )
    assert run.returncode == 1, run.stderr
    lines = _lines(run.stderr)
    assert lines[0] == WARNING and lines[-1].startswith("camcli: 6 done, 6 failed in ")
    failures = sorted(lines[1:-1])
    assert failures == sorted(
        f"{name}: cannot write outputs {name}.cam.png: File too large" for name in big
    ), run.stderr
    records = check_output_sets(folder)
    assert sorted(records) == sorted(f"{Path(n).name}.cam.json" for n in small)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs mounted at ``tmp_path / "out"``; unmounted afterwards."""
    disk = tmp_path / "out"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_full_disk_stops_the_run_and_skip_existing_finishes_it(tmp_path, small_disk):
    folder = tmp_path / "in"
    folder.mkdir()
    count = 30  # ~360 kB overlays: a 1 MiB disk holds two or three
    for i in range(count):
        _noise(folder / f"img{i:02d}.png", seed=i)
    run = run_explain(["in", "-o", "out", "--batch-size", "4", *SMALL_MODEL], tmp_path)
    assert run.returncode == 1, run.stderr
    lines = _lines(run.stderr)
    failures = [line for line in lines if line.startswith("in/")]
    assert len(failures) == STOP_AFTER_FULL_WRITES, run.stderr
    for line in failures:
        assert re.fullmatch(
            r"in/img\d\d\.png: cannot write outputs out/in/img\d\d\.png\.cam\.(png|json): "
            r"No space left on device", line
        ), line
    (stopped,) = [line for line in lines if line.startswith("camcli: error:")]
    assert stopped == (
        f"camcli: error: stopped: {STOP_AFTER_FULL_WRITES} inputs in a row could not be written "
        "(No space left on device); free some space and rerun with --skip-existing to do "
        "what is missing"
    )
    done = int(re.search(r"camcli: (\d+) done, (\d+) failed", lines[-1]).group(1))
    assert done + len(failures) < count, "the run went on after the disk was full"
    assert len(lines) == 2 + len(failures) + 1, run.stderr  # warning, failures, stop, summary
    first = check_output_sets(small_disk)
    assert len(first) == done

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    rerun = run_explain(
        ["in", "-o", "out", "--skip-existing", "--json", *SMALL_MODEL], tmp_path
    )
    assert rerun.returncode == 0, rerun.stderr
    results = [json.loads(line) for line in _lines(rerun.stdout)]
    skipped = sorted(Path(r["input"]).name for r in results if r.get("skipped"))
    assert skipped == sorted(name.removesuffix(".cam.json") for name in first)
    assert len(results) == count
    assert len(check_output_sets(small_disk)) == count
