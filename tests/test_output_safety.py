"""Where outputs go, through the real ``camcli`` command: never over an input, never unbounded.

- No output replaces an input, whatever ``--out-dir`` and ``--overlay-format`` say: an input
  named like another input's output, an output name that is a symlink to its own input,
  ``--out-dir .`` and ``--out-dir`` equal to the input folder.
- An output folder that cannot be written fails that input with a clear reason (run without
  root's file privileges); inputs elsewhere are still explained.
- A 40-megapixel JPEG is explained with bounded memory (the child's peak RSS is measured) with
  a full-resolution overlay (``--max-overlay-side 0``), and ``--max-overlay-side`` caps the
  overlay while the JSON stays in input pixels.

Random weights (``--weights none``) and a dead proxy: nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import (
    CAMCLI,
    SMALL_MODEL,
    WARNING,
    Started,
    drop_file_privileges,
    failed_line,
    json_lines,
    why_file_privileges_stay,
)
from cli_helpers import nonblank_lines as _lines
from cli_helpers import offline_env as _env
from PIL import Image

MODEL = SMALL_MODEL
GB = 1024**3


def _by_input(stdout: str) -> dict[str, dict]:
    records = json_lines(stdout)
    by_input = {r["input"]["path"]: r for r in records}
    assert len(by_input) == len(records), "an input was reported twice"
    return by_input


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _photo(path: Path, size=(32, 24), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="PNG" if path.suffix != ".jpg" else "JPEG")
    return path


def _image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.load()  # the whole file decodes
        return image.size


# --------------------------------------------------------------------------- never over an input


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    """The three runs of the tests below, started together: they are independent, and each
    start-up imports TensorFlow (seconds of one core). Each has a folder of its own."""
    runs = {}

    work = tmp_path_factory.mktemp("dot") / "work"
    _photo(work / "a.png", seed=1)
    _photo(work / "b.jpg", seed=2)
    _photo(work / "c.png", seed=3)
    (work / "c.png.cam.jpg").symlink_to("c.png")  # c.png's overlay name is c.png itself
    _photo(work / "scan", seed=4)  # no extension: its overlay would be "scan.cam.jpg" ...
    _photo(work / "scan.cam.jpg", size=(40, 30), seed=5)  # ... which is another user's photo
    before = _digests(work)
    runs["dot"] = Started([".", "scan", "-o", ".", "--overlay-format", "jpg", *MODEL, "--json"],
                          work, facts={"before": before})

    folder = tmp_path_factory.mktemp("same")
    imgs = folder / "imgs"
    _photo(imgs / "x.png", seed=6)
    _photo(imgs / "sub" / "y.jpg", seed=7)
    before = _digests(imgs)
    runs["same"] = Started(["imgs", "-r", "-o", "imgs", *MODEL, "--json", "-q"], folder,
                           facts={"before": before})

    why_not = why_file_privileges_stay() if os.geteuid() == 0 else None
    if why_not is None:
        folder = tmp_path_factory.mktemp("locked")
        locked = folder / "locked"
        _photo(locked / "p.png", seed=8)
        _photo(folder / "open" / "q.png", seed=9)
        locked.chmod(0o555)
        preexec = drop_file_privileges if os.geteuid() == 0 else None
        runs["locked"] = Started(["locked/p.png", "open/q.png", *MODEL, "--json"], folder,
                                 preexec_fn=preexec, after=lambda: locked.chmod(0o755))
    runs["why_not_unprivileged"] = why_not
    yield runs
    for run in runs.values():
        if isinstance(run, Started):
            run.stop()


def test_no_output_replaces_an_input_with_out_dir_dot(started):
    work, before = started["dot"].cwd, started["dot"].facts["before"]
    run = started["dot"].result()

    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    assert _digests(work).items() >= before.items(), "an input file was changed"
    assert (work / "c.png.cam.jpg").is_symlink()
    assert os.readlink(work / "c.png.cam.jpg") == "c.png"

    results = _by_input(run.stdout)
    assert set(results) == {"a.png", "b.jpg", "c.png", "scan", "scan.cam.jpg"}
    assert results["c.png"] == failed_line(
        "c.png", "cannot write outputs: refusing to overwrite the input file c.png"
    )
    assert not results["scan"]["ok"]
    assert results["scan"]["error"].startswith(
        "cannot write outputs: refusing to overwrite scan.cam.jpg"
    )
    failures = [line for line in _lines(run.stderr) if line.startswith(("c.png:", "scan:"))]
    assert sorted(failures) == [
        f"c.png: {results['c.png']['error']}",
        f"scan: {results['scan']['error']}",
    ]
    assert _lines(run.stderr)[-1].startswith("camcli: 3 done, 2 failed in ")
    for name, size in {"a.png": (32, 24), "b.jpg": (32, 24), "scan.cam.jpg": (40, 30)}.items():
        record = results[name]
        assert record["ok"], record
        assert record["files"] == [f"{name}.cam.jpg", f"{name}.cam.json"]
        with Image.open(work / f"{name}.cam.jpg") as overlay:
            assert overlay.format == "JPEG" and overlay.size == size
    assert not (work / "scan.cam.json").exists()  # the failed input wrote nothing
    assert not list(work.glob(".*camcli-tmp"))


def test_out_dir_equal_to_the_input_folder_mirrors_inside_it(started):
    imgs, before = started["same"].cwd / "imgs", started["same"].facts["before"]
    run = started["same"].result()

    assert run.returncode == 0, run.stderr
    assert _lines(run.stderr) == [WARNING]
    results = _by_input(run.stdout)
    assert set(results) == {"imgs/x.png", "imgs/sub/y.jpg"}
    after = _digests(imgs)
    assert {k: after[k] for k in before} == before
    assert sorted(set(after) - set(before)) == [
        "imgs/sub/y.jpg.cam.json",
        "imgs/sub/y.jpg.cam.png",
        "imgs/x.png.cam.json",
        "imgs/x.png.cam.png",
    ]
    umask = os.umask(0o022)
    os.umask(umask)
    for name in ("x.png", "sub/y.jpg"):
        assert results[f"imgs/{name}"]["files"] == [
            f"imgs/imgs/{name}.cam.png",
            f"imgs/imgs/{name}.cam.json",
        ]
        assert _image_size(imgs / "imgs" / f"{name}.cam.png") == (32, 24)
        # outputs are as readable as any file the user writes, not private temporaries (0600)
        for suffix in (".cam.png", ".cam.json"):
            mode = stat.S_IMODE((imgs / "imgs" / f"{name}{suffix}").stat().st_mode)
            assert mode == 0o666 & ~umask, f"{name}{suffix}: mode {mode:o}, umask {umask:o}"


# --------------------------------------------------------------------------- read-only folder


def test_a_read_only_output_folder_fails_only_its_inputs(started):
    if started["why_not_unprivileged"]:
        pytest.skip(started["why_not_unprivileged"])
    tmp_path = started["locked"].cwd
    locked = tmp_path / "locked"
    run = started["locked"].result()  # locked/ is mode 555 until the run is over

    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    results = _by_input(run.stdout)
    reason = "cannot write outputs locked/p.png.cam.png: Permission denied"
    assert results["locked/p.png"] == failed_line("locked/p.png", reason)
    assert results["open/q.png"]["ok"]
    assert _image_size(tmp_path / "open" / "q.png.cam.png") == (32, 24)
    lines = _lines(run.stderr)
    assert lines == [WARNING, f"locked/p.png: {reason}", lines[-1]]
    assert lines[-1].startswith("camcli: 1 done, 1 failed in ")
    assert sorted(p.name for p in locked.iterdir()) == ["p.png"]  # not even a temporary file


# --------------------------------------------------------------------------- 40 megapixels


def _vm_hwm(pid: int) -> int | None:
    """The process's peak RSS so far (VmHWM, bytes), or None once it has exited."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _run_measured(commands, cwd: Path, timeout: float = 300):
    """Run camcli once per argument list in ``commands``, all at once; return, per command,
    (returncode, stdout, stderr, peak RSS in bytes of that child alone).

    The peak is polled from /proc (VmHWM restarts at exec), per process, so children running
    side by side are each measured alone. wait4's ru_maxrss would not do: at exec Linux
    records the forked copy's high-water mark, i.e. this pytest process's own size.
    """
    started = []
    for i, args in enumerate(commands):
        stamp = f"{i}.{time.monotonic_ns()}"
        out, err = cwd / f"stdout{stamp}", cwd / f"stderr{stamp}"
        with open(out, "w") as stdout, open(err, "w") as stderr:
            process = subprocess.Popen([str(CAMCLI), "explain", *args], cwd=cwd, env=_env(cwd),
                                       stdout=stdout, stderr=stderr)
        started.append((args, process, out, err))
    deadline = time.monotonic() + timeout
    peaks = [0] * len(started)
    try:
        while any(process.poll() is None for _, process, _, _ in started):
            for i, (_, process, _, _) in enumerate(started):
                if process.poll() is None:
                    peaks[i] = max(peaks[i], _vm_hwm(process.pid) or 0)
            if time.monotonic() > deadline:
                pytest.fail(f"camcli did not finish in {timeout}s")
            time.sleep(0.02)
    finally:
        for _, process, _, _ in started:
            if process.poll() is None:
                process.kill()
                process.wait()
    results = []
    for (_, process, out, err), peak in zip(started, peaks, strict=True):
        text = out.read_text(), err.read_text()
        out.unlink()
        err.unlink()
        results.append((process.returncode, *text, peak))
    return results


@pytest.fixture(scope="module")
def huge_jpeg(tmp_path_factory):
    """An 8000 x 5000 (40-megapixel) JPEG: a smooth gradient, quick to make, ~1 MB on disk."""
    folder = tmp_path_factory.mktemp("huge")
    width, height = 8000, 5000
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    pixels = np.empty((height, width, 3), np.uint8)
    pixels[..., 0] = x
    pixels[..., 1] = y
    pixels[..., 2] = (x + y) / 2
    Image.fromarray(pixels).save(folder / "huge.jpg", quality=85)
    return folder


def test_a_40_megapixel_jpeg_is_explained_in_bounded_memory(huge_jpeg):
    # Both runs at once (each child's peak is its own): full size, and the overlay capped.
    (returncode, stdout, stderr, peak), capped_run = _run_measured([
        ["huge.jpg", "--max-overlay-side", "0", *MODEL, "--json"],
        ["huge.jpg", "-o", "capped", "--max-overlay-side", "1000", *MODEL, "--json"],
    ], huge_jpeg)
    assert returncode == 0, stderr
    (record,) = [json.loads(line) for line in _lines(stdout)]
    assert (record["input"]["width"], record["input"]["height"]) == (8000, 5000)
    assert _image_size(huge_jpeg / "huge.jpg.cam.png") == (8000, 5000)  # full resolution
    assert peak < 2.5 * GB, f"peak RSS {peak / GB:.2f} GB for a 40-megapixel input"

    returncode, stdout, stderr, capped_peak = capped_run
    assert returncode == 0, stderr
    (capped,) = [json.loads(line) for line in _lines(stdout)]
    assert _image_size(huge_jpeg / "capped" / "huge.jpg.cam.png") == (1000, 625)
    assert capped_peak < peak, (
        f"capped overlay: peak RSS {capped_peak / GB:.2f} GB, full: {peak / GB:.2f} GB"
    )
    # The JSON stays in the input's pixels: 8000 x 5000, peaks on the centres of the 4x4 cells.
    assert (capped["input"]["width"], capped["input"]["height"]) == (8000, 5000)
    (explained,) = capped["explanations"]
    assert explained["peak"]["x"] in (1000, 3000, 5000, 7000), explained
    assert explained["peak"]["y"] in (625, 1875, 3125, 4375), explained
    assert capped["settings_fingerprint"] != record["settings_fingerprint"]
