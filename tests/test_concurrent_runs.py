"""Two runs at once, and inputs that change while a run goes, through the real ``camcli`` command.

- Two runs started together over the same folder with different colormaps (and a third, one
  shard of it) all succeed, and afterwards every record names files whose bytes are
  the ones it hashed: no record describes another run's overlay.
- Files rewritten again and again while a stdin-fed run reads them: each record's ``sha256``,
  size and overlay describe one and the same version of its file.

Random weights (``--weights none``) and a dead proxy: nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
from pathlib import Path

import numpy as np
from cli_helpers import SMALL_MODEL, check_output_sets, start_explain
from cli_helpers import nonblank_lines as _lines
from PIL import Image

COUNT = 24


def _noise_folder(folder: Path) -> list[str]:
    folder.mkdir()
    rng = np.random.default_rng(3)
    names = [f"img{i:02d}.png" for i in range(COUNT)]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(folder / name)
    return names


def test_runs_at_once_on_the_same_outputs_never_mix_them(tmp_path):
    names = _noise_folder(tmp_path / "in")
    runs = [
        start_explain(["in", "--colormap", colormap, "--batch-size", "2", *SMALL_MODEL],
                      tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for colormap in ("jet", "gray")
    ]
    runs.append(start_explain(["in", "--shard", "1/2", "--colormap", "viridis", "--batch-size",
                               "3", *SMALL_MODEL], tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE))  # a shard overlapping both runs
    for run in runs:
        _, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, stderr
        assert [line for line in _lines(stderr) if not line.startswith("camcli: ")] == []
    records = check_output_sets(tmp_path / "in")
    assert sorted(records) == sorted(f"{name}.cam.json" for name in names)
    fingerprints = {record["settings_fingerprint"] for record in records.values()}
    assert 1 <= len(fingerprints) <= 3


VERSIONS = {  # name -> (size, colour): each version of a file is told apart by both
    "a": ((90, 60), (220, 20, 20)),
    "b": ((60, 90), (20, 20, 220)),
}


def _version_bytes(version: str, seed: int) -> bytes:
    import io

    size, colour = VERSIONS[version]
    pixels = np.full((size[1], size[0], 3), colour, np.int16)
    pixels += np.random.default_rng(seed).integers(-10, 10, pixels.shape, dtype=np.int16)
    buffer = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_file_rewritten_while_read_is_described_as_one_version(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    count = 16
    versions = {}
    for i in range(count):
        versions[i] = {v: _version_bytes(v, i) for v in VERSIONS}
        (folder / f"f{i:02d}.png").write_bytes(versions[i]["a"])
    done = threading.Event()

    def keep_rewriting():  # atomically swap each file between its versions until the run ends
        flip = 0
        while not done.is_set():
            flip += 1
            for i in range(count):
                temporary = folder / f"f{i:02d}.tmp"
                temporary.write_bytes(versions[i]["ab"[(flip + i) % 2]])
                os.replace(temporary, folder / f"f{i:02d}.png")

    writer = threading.Thread(target=keep_rewriting)
    writer.start()
    try:
        run = start_explain(["-", "--alpha", "0.3", "--json", "--batch-size", "2", *SMALL_MODEL],
                            tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
        paths = "".join(f"in/f{i:02d}.png\n" for i in range(count))
        stdout, stderr = run.communicate(paths, timeout=600)
    finally:
        done.set()
        writer.join()
    assert run.returncode == 0, stderr
    results = [json.loads(line) for line in _lines(stdout)]
    assert len(results) == count
    seen = set()
    for result in results:
        i = int(Path(result["input"]["path"]).stem[1:])
        by_hash = {hashlib.sha256(data).hexdigest(): v for v, data in versions[i].items()}
        version = by_hash[result["input"]["sha256"]]  # a KeyError would be a torn read
        seen.add(version)
        size, colour = VERSIONS[version]
        assert (result["input"]["width"], result["input"]["height"]) == size
        (entry,) = result["explanations"]
        with Image.open(folder / entry["overlay"]) as overlay:
            assert overlay.size == size
            mean = np.asarray(overlay, np.float64).reshape(-1, 3).mean(axis=0)
        dominant = int(np.argmax(mean))
        assert dominant == int(np.argmax(colour)), (result["input"]["path"], version, mean)
