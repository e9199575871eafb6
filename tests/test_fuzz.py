"""Deterministic fuzzing through the real ``camcli`` command: broken files never break a run.

The sample photos, shrunk, are saved in every supported format (JPEG baseline and progressive,
PNG, GIF, BMP, TIFF raw/LZW/deflate/JPEG/group 4, WebP lossy and lossless), then mutated with a
seeded generator: bit flips, truncations, header edits (random bytes, and width/height fields
made huge or zero), chunk swaps. One run over all of them must end in bounded time with exit 0
or 1, no traceback and nothing on stderr but camcli's lines; each input is either explained
(its record names complete files) or failed with one ``path: reason`` line.

Random weights (``--weights none``) and a dead proxy: nothing is ever downloaded.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from cli_helpers import SMALL_MODEL, WARNING, check_output_sets, json_lines, run_explain
from cli_helpers import nonblank_lines as _lines
from PIL import Image

SAMPLES = Path(__file__).resolve().parent.parent / "sample_images"
SEED, PER_SEED_FILE = 14, 5
FORMATS = {  # extension -> Pillow save arguments
    "jpg": ("JPEG", {"quality": 85}),
    "progressive.jpg": ("JPEG", {"progressive": True}),
    "png": ("PNG", {}),
    "gif": ("GIF", {}),
    "bmp": ("BMP", {}),
    "tif": ("TIFF", {}),
    "lzw.tif": ("TIFF", {"compression": "tiff_lzw"}),
    "deflate.tif": ("TIFF", {"compression": "tiff_adobe_deflate"}),
    "jpeg.tif": ("TIFF", {"compression": "jpeg"}),
    "g4.tif": ("TIFF", {"compression": "group4"}),
    "webp": ("WEBP", {}),
    "lossless.webp": ("WEBP", {"lossless": True}),
}


def _seeds() -> dict[str, bytes]:
    """Every sample photo, shrunk to 96 pixels, in every format."""
    seeds = {}
    for photo in sorted(SAMPLES.glob("*.*g")):
        with Image.open(photo) as image:
            image = image.convert("RGB")
            image.thumbnail((96, 96))
        for extension, (fmt, options) in FORMATS.items():
            picture = image.convert("1") if fmt == "TIFF" and "group4" in str(options) else image
            buffer = io.BytesIO()
            picture.save(buffer, fmt, **options)
            seeds[f"{photo.stem}.{extension}"] = buffer.getvalue()
    return seeds


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    data = bytearray(data)
    kind = rng.integers(5)
    if kind == 0:  # a few bit flips anywhere
        for position in rng.integers(0, len(data), rng.integers(1, 9)):
            data[position] ^= 1 << int(rng.integers(8))
    elif kind == 1:  # truncated
        data = data[: int(rng.integers(1, len(data)))]
    elif kind == 2:  # random bytes in the header
        for position in rng.integers(0, min(len(data), 64), rng.integers(1, 6)):
            data[position] = int(rng.integers(256))
    elif kind == 3:  # a 16- or 32-bit field in the header made huge or zero (sizes, offsets)
        position = int(rng.integers(0, min(len(data), 48) - 4))
        width = int(rng.choice([2, 4]))
        data[position : position + width] = (b"\xff" if rng.integers(2) else b"\x00") * width
    else:  # two spans of the body swapped (chunks, strips and segments out of order)
        a, b = sorted(rng.integers(0, len(data), 2))
        span = int(rng.integers(1, 200))
        data[a : a + span], data[b : b + span] = data[b : b + span], data[a : a + span]
    return bytes(data)


def _fuzz_folder(folder: Path) -> list[str]:
    folder.mkdir()
    rng = np.random.default_rng(SEED)
    names = []
    for seed_name, data in _seeds().items():
        stem, extension = seed_name.split(".", 1)
        for i in range(PER_SEED_FILE):
            name = f"{stem}_{i}.{extension}"
            (folder / name).write_bytes(_mutate(data, rng))
            names.append(name)
    return names


def test_mutated_files_are_each_explained_or_failed_with_a_reason(tmp_path):
    names = _fuzz_folder(tmp_path / "fuzz")
    assert len(names) >= 200
    run = run_explain(
        ["fuzz", "--json", "--max-pixels", "20000000", "--batch-size", "16", *SMALL_MODEL],
        tmp_path, timeout=600,
    )
    assert run.returncode in (0, 1), run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    results = {}
    for result in json_lines(run.stdout):  # every failed line of the fuzz: of the schema
        results[Path(result["input"]["path"]).name] = result
    assert sorted(results) == sorted(names)
    failed = {name for name, result in results.items() if not result["ok"]}
    lines = _lines(run.stderr)
    assert lines[0] == WARNING
    assert lines[-1].startswith(f"camcli: {len(names) - len(failed)} done, {len(failed)} failed")
    reasons = {}
    for line in lines[1:-1]:
        path, _, reason = line.partition(": ")
        assert path.startswith("fuzz/") and reason, f"not one of camcli's lines: {line!r}"
        reasons[Path(path).name] = reason
    assert len(reasons) == len(lines) - 2, "an input failed twice"
    assert set(reasons) == failed
    for name in failed:
        assert results[name]["error"] == reasons[name]
    records = check_output_sets(tmp_path / "fuzz")
    assert sorted(records) == sorted(f"{name}.cam.json" for name in set(names) - failed)
