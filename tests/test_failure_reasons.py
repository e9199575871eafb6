"""A failure's reason names the stage that failed: decoding is never blamed on writing.

- Through the real ``camcli`` command: a PNG whose pixel data is whole but whose trailing chunk
  is cut (Pillow's full load raises ``Truncated File Read``; a first load inside EXIF reading
  used to hide it, so the model's decode passed and the overlay's failed) and a JPEG cut in
  half both fail as ``cannot decode image: …``.
- In-process, bytes that decode for the model but not at full resolution (the model's pixels
  are given, the file's bytes are cut) fail as ``cannot decode image at full resolution: …``.

Random weights (``--weights none``) and a dead proxy: nothing is ever downloaded.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from cli_helpers import SMALL_MODEL, WARNING, run_explain
from cli_helpers import nonblank_lines as _lines
from PIL import Image

from camcli import images


def _photo(size=(160, 120)) -> Image.Image:
    rng = np.random.default_rng(8)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _png_with_cut_trailing_chunk() -> bytes:
    """Whole image data, then a tEXt chunk after IDAT cut short, and no IEND."""
    buffer = io.BytesIO()
    _photo().save(buffer, "PNG")
    data = buffer.getvalue()
    body = b"Comment\0" + b"x" * 2000
    crc = struct.pack(">I", zlib.crc32(b"tEXt" + body))
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + crc
    return data[: data.rindex(b"IEND") - 4] + chunk[:500]


def _half_jpeg() -> bytes:
    buffer = io.BytesIO()
    _photo().save(buffer, "JPEG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def test_truncated_files_fail_as_decoding_through_the_cli(tmp_path):
    (tmp_path / "cut_chunk.png").write_bytes(_png_with_cut_trailing_chunk())
    (tmp_path / "half.jpg").write_bytes(_half_jpeg())
    _photo().save(tmp_path / "good.png")
    run = run_explain(["cut_chunk.png", "half.jpg", "good.png", *SMALL_MODEL], tmp_path)
    assert run.returncode == 1, run.stderr
    lines = _lines(run.stderr)
    assert lines[0] == WARNING and lines[-1].startswith("camcli: 1 done, 2 failed in ")
    failures = dict(line.split(": ", 1) for line in lines[1:-1])
    assert failures == {
        "cut_chunk.png": "cannot decode image: Truncated File Read",
        "half.jpg": failures.get("half.jpg"),
    }
    assert failures["half.jpg"].startswith("cannot decode image: image file is truncated")
    assert not any(Path(tmp_path, f"{name}.cam.json").exists() for name in failures)


def test_a_full_resolution_decode_failure_says_so(tmp_path):
    from camcli.api import Explainer

    explainer = Explainer(model="mobilenet_v1_0.25_128", weights="none")
    pipeline = explainer.pipeline()
    path = tmp_path / "cut.jpg"
    data = _half_jpeg()
    path.write_bytes(data)
    item = images.DecodedImage(path, data, (160, 120), np.zeros((128, 128, 3), np.uint8))
    (result,) = pipeline.run_batch([item])
    assert not result.ok
    assert result.error.startswith("cannot decode image at full resolution: image file is trunc")
    assert list(tmp_path.iterdir()) == [path]
