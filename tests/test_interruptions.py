"""Runs that are killed or interrupted, through the real ``camcli`` command: no work is lost.

- SIGKILL part-way through a batch run leaves only complete files that a later run may trust
  (every record names complete files; overlays are whole; temporaries are ignored), and
  ``--skip-existing`` then produces exactly the missing outputs.
- SIGINT (Ctrl-C) and SIGTERM stop after the batch in flight is written, print the summary and
  exit 130.

Random weights (``--weights none``) and a dead proxy: nothing is ever downloaded.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import CAMCLI, SMALL_MODEL, json_lines, record_of
from cli_helpers import nonblank_lines as _lines
from cli_helpers import offline_env as _env
from PIL import Image

MODEL = SMALL_MODEL
COUNT, SIZE = 60, (400, 300)  # noise PNGs: incompressible, so each overlay takes a moment


def _make_inputs(folder: Path) -> list[str]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(11)
    names = [f"img{i:02d}.png" for i in range(COUNT)]
    for name in names:
        pixels = rng.integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name, compress_level=0)
    return names


def _start(args, cwd: Path, stdout, stderr) -> subprocess.Popen:
    assert CAMCLI.exists(), f"the camcli entry point is not installed at {CAMCLI}"
    return subprocess.Popen(
        [str(CAMCLI), "explain", *args], cwd=cwd, env=_env(cwd), stdout=stdout, stderr=stderr
    )


def _wait_for_records(process: subprocess.Popen, folder: Path, at_least: int, log: Path):
    """Return once ``at_least`` records exist; fail if the run ends or stalls first."""
    deadline = time.monotonic() + 240
    while len(list(folder.glob("*.cam.json"))) < at_least:
        assert process.poll() is None, f"camcli ended before it was stopped:\n{log.read_text()}"
        assert time.monotonic() < deadline, "no outputs appeared"
        time.sleep(0.005)


def _check_complete(folder: Path) -> dict[str, dict]:
    """Every record parses and names overlays that exist and decode fully at the input's size;
    every overlay present (with or without a record) decodes fully. Returns name -> record."""
    records = {}
    for path in sorted(folder.glob("*.cam.json")):
        record = json.loads(path.read_bytes())  # a torn record would not parse
        name = Path(record["input"]["path"]).name
        assert path.name == f"{name}.cam.json"
        assert (record["input"]["width"], record["input"]["height"]) == SIZE
        (explained,) = record["explanations"]
        assert (folder / explained["overlay"]).is_file(), f"{path.name} names a missing file"
        records[name] = record
    for overlay in folder.glob("*.cam.png"):
        with Image.open(overlay) as image:
            image.load()  # raises on a truncated PNG
            assert image.size == SIZE, overlay.name
    return records


def _temporaries(folder: Path, inputs: list[str]) -> list[str]:
    known = set(inputs)
    outputs = {f"{n}.cam.json" for n in inputs} | {f"{n}.cam.png" for n in inputs}
    return sorted(p.name for p in folder.iterdir() if p.name not in known | outputs)


# --------------------------------------------------------------------------- SIGKILL, then resume


def test_sigkill_mid_run_then_skip_existing_makes_exactly_the_missing_outputs(tmp_path):
    imgs = tmp_path / "imgs"
    inputs = _make_inputs(imgs)
    log = tmp_path / "killed.stderr"
    with open(log, "w") as stderr:
        process = _start(["imgs", "--batch-size", "4", *MODEL, "-q"], tmp_path, None, stderr)
        try:
            _wait_for_records(process, imgs, 12, log)
        finally:
            process.kill()  # SIGKILL: no handler, no cleanup
            process.wait()
    assert process.returncode == -signal.SIGKILL

    # What the killed run left: only complete files, and temporaries no run will trust.
    complete = _check_complete(imgs)
    assert 12 <= len(complete) < COUNT, f"not killed part-way: {len(complete)} records"
    leftovers = _temporaries(imgs, inputs)
    assert all(  # temporaries, and the lock of an output set being written (empty)
        n.startswith(".") and n.endswith((".camcli-tmp", ".cam.lock")) for n in leftovers
    ), leftovers

    # Damage an earlier crash (or a non-atomic tool) could have left, which must not be trusted:
    # a torn record for a finished input, a torn overlay for an unfinished one, a stray temporary.
    torn_record = sorted(complete)[0]
    record_path = imgs / f"{torn_record}.cam.json"
    record_path.write_bytes(record_path.read_bytes()[:100])
    unfinished = sorted(set(inputs) - set(complete))
    torn_overlay = imgs / f"{unfinished[-1]}.cam.png"
    whole = (imgs / f"{sorted(complete)[-1]}.cam.png").read_bytes()
    torn_overlay.write_bytes(whole[: len(whole) // 2])
    stray = imgs / f".{unfinished[0]}.cam.png.k3j2h1x0.camcli-tmp"
    stray.write_bytes(whole[:1000])
    trusted = {name: (imgs / f"{name}.cam.json") for name in complete if name != torn_record}
    before = {name: (p.read_bytes(), p.stat().st_mtime_ns) for name, p in trusted.items()}

    rerun = subprocess.run(
        [str(CAMCLI), "explain", "imgs", "--skip-existing", "--batch-size", "4", *MODEL, "--json"],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=240,
    )

    assert rerun.returncode == 0, rerun.stderr
    lines = json_lines(rerun.stdout)  # skipped and done lines, checked against the schema
    assert all(line["ok"] for line in lines), lines
    skipped = sorted(Path(line["input"]["path"]).name for line in lines if line["skipped"])
    done = sorted(Path(line["input"]["path"]).name for line in lines if not line["skipped"])
    for line in lines:
        assert (line["input"]["sha256"] is None) == line["skipped"]  # a skipped input: unread
    assert len(lines) == COUNT  # every input once: no temporary or output taken as an input
    assert skipped == sorted(trusted)
    assert done == sorted(set(inputs) - set(trusted))
    assert torn_record in done and unfinished[-1] in done
    summary = _lines(rerun.stderr)[-1]
    assert summary.startswith(f"camcli: {len(done)} done, {len(skipped)} skipped, 0 failed in ")

    # The skipped records were not rewritten; everything is now complete and valid.
    for name, (data, mtime) in before.items():
        path = trusted[name]
        assert (path.read_bytes(), path.stat().st_mtime_ns) == (data, mtime), name
    assert sorted(_check_complete(imgs)) == sorted(inputs)
    for line in lines:
        if not line.get("skipped"):
            path = line["input"]["path"]
            assert line["files"] == [f"{path}.cam.png", f"{path}.cam.json"]
    # temporaries are ignored (or cleaned), never explained nor trusted
    assert set(_temporaries(imgs, inputs)) <= set(leftovers) | {stray.name}


# --------------------------------------------------------------------------- SIGINT, SIGTERM


SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM}


@pytest.fixture(scope="module")
def signalled(tmp_path_factory):
    """One run per signal, started together (each start-up imports TensorFlow: seconds of one
    core), each in a folder of its own; each gets its signal once it has written 8 records.
    Returns signal name -> (folder, inputs, returncode, stdout file, stderr file)."""
    started = {}
    for name in SIGNALS:
        root = tmp_path_factory.mktemp(name)
        inputs = _make_inputs(root / "imgs")
        out, log = root / "stdout", root / "stderr"
        with open(out, "w") as stdout, open(log, "w") as stderr:
            process = _start(["imgs", "--batch-size", "4", *MODEL, "--json"], root, stdout,
                             stderr)
        started[name] = (root, inputs, process, out, log)
    results = {}
    try:
        pending = dict(started)
        deadline = time.monotonic() + 240
        while pending:  # signal each run as soon as it has 8 records, as the test did
            for name, (root, _, process, _, log) in list(pending.items()):
                if len(list((root / "imgs").glob("*.cam.json"))) >= 8:
                    process.send_signal(SIGNALS[name])
                    del pending[name]
                else:
                    assert process.poll() is None, (
                        f"camcli ended before it was stopped:\n{log.read_text()}")
            assert time.monotonic() < deadline, "no outputs appeared"
            time.sleep(0.005)
        for name, (root, inputs, process, out, log) in started.items():
            results[name] = (root, inputs, process.wait(timeout=120), out, log)
    finally:
        for _, _, process, _, _ in started.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return results


@pytest.mark.parametrize("signame", list(SIGNALS))
def test_a_signal_stops_after_the_batch_in_flight_with_a_summary(signalled, signame):
    tmp_path, inputs, returncode, out, log = signalled[signame]
    imgs = tmp_path / "imgs"
    stderr_text = log.read_text()

    assert returncode == 130, stderr_text
    assert "Traceback" not in stderr_text
    lines = json_lines(out.read_text())  # an interrupted run's lines: whole, of the schema
    assert all(line["ok"] for line in lines)
    finished = sorted(Path(line["input"]["path"]).name for line in lines)
    summary = _lines(stderr_text)[-1]
    assert summary.startswith(f"camcli: interrupted: {len(finished)} done, 0 failed in "), summary
    assert 8 <= len(finished) < COUNT, "the run did not stop early"

    # Each finished image has its complete outputs; nothing else was written, nothing is partial.
    records = _check_complete(imgs)
    assert sorted(records) == finished
    assert sorted(p.name for p in imgs.glob("*.cam.png")) == [f"{n}.cam.png" for n in finished]
    assert _temporaries(imgs, inputs) == []
    for line in lines:
        name = Path(line["input"]["path"]).name
        on_disk = json.loads((imgs / f"{name}.cam.json").read_bytes())
        assert on_disk == record_of(line)
