"""Libraries' own warnings stay off stderr, through the real ``camcli`` command.

libtiff (inside Pillow) prints ``Fax4Decode: Bad code word …`` straight to file descriptor 2
when a CCITT group 4 strip has a broken code word, yet the image still loads; Pillow's TIFF
reader logs ``More samples per pixel than can be decoded: N`` through Python's logging (whose
last-resort handler prints it on stderr) before refusing a file with too many samples per
pixel. A run over such files keeps stderr to camcli's lines; with ``--debug`` the warnings
appear as ``camcli: debug:`` lines naming the input being decoded.

Random weights (``--weights none``) and a dead proxy: nothing is ever downloaded.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys

import numpy as np
import pytest
from cli_helpers import SMALL_MODEL, WARNING, finish, start_explain, stop
from cli_helpers import nonblank_lines as _lines
from PIL import Image

NOISE = "Fax4Decode"
LOGGED = "More samples per pixel than can be decoded: 65535"
INPUTS = ["noisy.tif", "odd.tif", "plain.png"]


def _noisy_tiff() -> bytes:
    """A 1-bit group 4 TIFF whose first strip byte is 0xFF: libtiff warns, Pillow loads it."""
    rng = np.random.default_rng(0)
    bits = Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).convert("1")
    buffer = io.BytesIO()
    bits.save(buffer, "TIFF", compression="group4")
    data = bytearray(buffer.getvalue())
    data[8] = 0xFF  # Pillow writes the strip right after the 8-byte header
    return bytes(data)


def _many_samples_tiff() -> bytes:
    """An RGB TIFF whose SamplesPerPixel tag (277) says 65535: Pillow logs, then refuses it."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 30, 30)).save(buffer, "TIFF")
    data = bytearray(buffer.getvalue())
    assert data[:2] == b"II", "Pillow writes little-endian TIFFs"
    (ifd,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd)
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        tag, kind, _ = struct.unpack_from("<HHI", data, entry)
        if tag == 277:
            assert kind == 3, "SamplesPerPixel is a SHORT"
            struct.pack_into("<H", data, entry + 8, 65535)
            return bytes(data)
    raise AssertionError("no SamplesPerPixel tag")


def _inputs(tmp_path):
    (tmp_path / "noisy.tif").write_bytes(_noisy_tiff())
    (tmp_path / "odd.tif").write_bytes(_many_samples_tiff())
    Image.new("RGB", (50, 40), (20, 120, 200)).save(tmp_path / "plain.png")
    loading = "from PIL import Image; im = Image.open('noisy.tif'); im.load(); print(im.size)"
    plain = subprocess.run(
        [sys.executable, "-c", loading], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert NOISE in plain.stderr, "precondition: this file makes libtiff write to fd 2"
    assert plain.stdout.strip() == "(80, 60)"
    refusing = "from PIL import Image\ntry: Image.open('odd.tif')\nexcept OSError: print('no')"
    odd = subprocess.run(
        [sys.executable, "-c", refusing], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert LOGGED in odd.stderr, "precondition: Pillow logs this on stderr"
    assert odd.stdout.strip() == "no"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The run without and the run with ``--debug``, started together (each start-up imports
    TensorFlow: seconds of one core), each over the same two inputs in a folder of its own."""
    started = {}
    for name, extra in (("plain", ()), ("debug", ("--debug",))):
        folder = tmp_path_factory.mktemp(name)
        _inputs(folder)
        started[name] = (folder, start_explain([*INPUTS, *extra, *SMALL_MODEL],
                                               folder, stdout=subprocess.PIPE,
                                               stderr=subprocess.PIPE))
    yield started
    stop(*(process for _, process in started.values()))


def test_library_warnings_never_reach_stderr(runs):
    tmp_path, process = runs["plain"]
    run = finish(process, 240)  # camcli explain noisy.tif odd.tif plain.png
    assert run.returncode == 1, run.stderr  # odd.tif cannot be read
    lines = _lines(run.stderr)
    assert lines[0] == WARNING
    assert lines[1] == "odd.tif: not an image file Pillow can read"
    assert lines[2].startswith("camcli: 2 done, 1 failed in ")
    assert len(lines) == 3, run.stderr
    assert (tmp_path / "noisy.tif.cam.png").is_file()


def test_debug_shows_them_attached_to_the_input(runs):
    run = finish(runs["debug"][1], 240)  # camcli explain noisy.tif odd.tif plain.png --debug
    assert run.returncode == 1, run.stderr
    for noise, name in ((NOISE, "noisy.tif"), (LOGGED, "odd.tif")):
        noisy = [line for line in _lines(run.stderr) if noise in line]
        assert noisy, run.stderr
        for line in noisy:
            assert line.startswith("camcli: debug: "), line
            assert name in line.split(noise)[0], line  # named before the library's words


_SCRIPT = """
import os, sys, threading
from camcli import native_stderr
native_stderr.capture(show={show})
def decode(name):
    with native_stderr.decoding(name):
        os.write(2, f"native warning from {{name}}\\n".encode())
threads = [threading.Thread(target=decode, args=(f"in{{i}}.tif",)) for i in range(4)]
for t in threads: t.start()
for t in threads: t.join()
os.write(2, b"native, outside any decode\\n")
print("camcli: own line", file=sys.stderr)
"""


def test_native_writes_from_threads_are_named_after_their_input():
    """In a small process (no model): each thread's write to fd 2 names its input (with any
    other input being decoded at that moment: fd 2 is one for the whole process)."""
    shown = subprocess.run([sys.executable, "-c", _SCRIPT.format(show=True)],
                           capture_output=True, text=True, check=True)
    lines = set(_lines(shown.stderr))
    assert "camcli: own line" in lines
    assert "camcli: debug: native, outside any decode" in lines
    for i in range(4):
        (line,) = [line for line in lines if line.endswith(f"native warning from in{i}.tif")]
        named = line.removeprefix("camcli: debug: ").split(": native")[0].split(", ")
        assert line.startswith("camcli: debug: ") and f"in{i}.tif" in named, line
    hidden = subprocess.run([sys.executable, "-c", _SCRIPT.format(show=False)],
                            capture_output=True, text=True, check=True)
    assert _lines(hidden.stderr) == ["camcli: own line"]
