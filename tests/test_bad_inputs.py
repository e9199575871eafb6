"""Messy folders through the real ``camcli`` command: each bad input is reported, none stops a run.

One folder holds every kind of bad input next to every odd format that must work; it is explained
in one run (as a user without root's file privileges, so an unreadable file is unreadable) and
each file's fate is checked: one ``path: reason`` line on stderr and an ``"ok": false`` JSON
record per failure, an upright overlay of the whole picture per success, exit code 1, the right
summary and no traceback. A second run covers ``--recursive`` over a symlink loop, one file named
many ways, overlapping globs, a small ``--max-pixels`` and what ``--debug`` adds.

Random weights (``--weights none``) and a dead proxy: nothing is ever downloaded.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from cli_helpers import (
    SMALL_MODEL,
    WARNING,
    drop_file_privileges,
    json_lines,
    record_of,
    run_explain,
    start_explain,
    why_file_privileges_stay,
)
from cli_helpers import nonblank_lines as _lines
from PIL import Image

MODEL = SMALL_MODEL


_run, _popen = run_explain, start_explain


# --------------------------------------------------------------------------- file privileges

def unprivileged():
    """``(preexec_fn, why_not)``: run the child with the preexec_fn to make it obey file modes
    (see cli_helpers.why_file_privileges_stay); ``why_not`` says why that is impossible here."""
    why_not = why_file_privileges_stay()
    return (None if why_not else drop_file_privileges), why_not


# --------------------------------------------------------------------------- inputs


def _png_header(width: int, height: int) -> bytes:
    """A PNG that only declares its size: signature, IHDR and IEND, no pixel data at all."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _truncated(path: Path, fmt: str, size=(96, 64)) -> None:
    rng = np.random.default_rng(len(path.name))
    noise = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    whole = path.with_name(path.name + ".whole")
    Image.fromarray(noise).save(whole, format=fmt)
    data = whole.read_bytes()
    whole.unlink()
    path.write_bytes(data[: len(data) // 2])  # cut mid-stream: the header is intact


RED, BLUE = (255, 0, 0), (0, 0, 255)


def _write_good(folder: Path) -> dict[str, tuple[int, int]]:
    """Odd but valid images; returns name -> upright (width, height)."""
    sizes = {}

    def save(name, image, **kwargs):
        image.save(folder / name, **kwargs)
        sizes[name] = image.size

    save("dot.png", Image.new("RGB", (1, 1), (10, 200, 30)))
    save("small.png", Image.new("RGB", (20, 12), (90, 90, 200)))  # smaller than 128x128
    panorama = np.zeros((300, 4000, 3), np.uint8)
    panorama[:, :2000] = RED
    save("pano.jpg", Image.fromarray(panorama), quality=90)
    deep = np.full((24, 32), 200, np.uint16)  # dark in 16 bits (200/65535), bright if misread
    deep[:, :16] = 60000
    save("deep16.png", Image.fromarray(deep))
    save("cmyk.jpg", Image.new("CMYK", (40, 30), (0, 255, 255, 0)), quality=95)  # red
    palette = Image.new("P", (30, 20), 0)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)  # 0: black (transparent), 1: blue
    palette.paste(1, (15, 0, 30, 20))
    save("palette.png", palette, transparency=0)
    rgba = np.zeros((20, 30, 4), np.uint8)  # left half transparent black, right half opaque blue
    rgba[:, 15:] = (0, 0, 255, 255)
    save("rgba.png", Image.fromarray(rgba, "RGBA"))
    save("gray.jpg", Image.fromarray(np.tile(np.arange(0, 250, 5, np.uint8), (30, 1)), "L"))
    frames = [Image.new("RGB", (24, 16), c) for c in (RED, BLUE, BLUE)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=40)
    sizes["anim.gif"] = (24, 16)
    # Stored 80 wide x 40 high, red in its left quarter; EXIF orientation 6 ("rotate 90° clockwise
    # to display"): upright it is 40 wide x 80 high with the red in its top quarter.
    stored = np.zeros((40, 80, 3), np.uint8)
    stored[:, :20] = RED
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(folder / "phone.jpg", exif=exif, quality=95)
    sizes["phone.jpg"] = (40, 80)
    save("with space.png", Image.new("RGB", (17, 9), (1, 2, 3)))
    save("ünïcödé 写真.png", Image.new("RGB", (11, 13), (4, 5, 6)))
    save("-leading-dash.png", Image.new("RGB", (14, 10), (7, 8, 9)))
    return sizes


# Bad inputs: name -> a check of the reason camcli gives.
def _starts(prefix: str, *words: str):
    return lambda reason: reason.startswith(prefix) and all(w in reason for w in words)


BAD = {
    "empty.jpg": lambda r: r == "empty file (0 bytes)",
    "cut.jpg": _starts("cannot decode image:", "truncated"),
    "cut.png": _starts("cannot decode image:", "truncated"),
    "page.jpg": lambda r: r == "not an image file Pillow can read",
    "notes.jpg": lambda r: r == "not an image file Pillow can read",
    "album.png": lambda r: r == "is a directory, not an image",
    "00_fifo.png": lambda r: r == "not a regular file but a named pipe (FIFO): not read",
    "bomb.png": _starts("refused"),  # 10 gigapixels: Pillow's own hard limit
    "bomb2.png": _starts("refused: 20000×5000 = 100,000,000 pixels", "--max-pixels"),
    "secret.png": lambda r: r == "permission denied",
}


@pytest.fixture(scope="module")
def messy_run(tmp_path_factory, tree_started):
    # tree_started: the second run of this module, independent of this one, is started first
    # so that both TensorFlow start-ups (seconds of one core each) overlap.
    preexec, no_unreadable = unprivileged()
    root = tmp_path_factory.mktemp("messy")
    imgs = root / "imgs"
    imgs.mkdir()
    sizes = _write_good(imgs)
    dash = root / "-x.png"  # named on the command line after `--`
    Image.new("RGB", (21, 19), (50, 60, 70)).save(dash)
    sizes_by_arg = {f"imgs/{name}": size for name, size in sizes.items()}
    sizes_by_arg["-x.png"] = (21, 19)

    (imgs / "empty.jpg").write_bytes(b"")
    _truncated(imgs / "cut.jpg", "JPEG")
    _truncated(imgs / "cut.png", "PNG")
    (imgs / "page.jpg").write_text("<!doctype html><html><body>404 Not Found</body></html>\n")
    (imgs / "notes.jpg").write_text("shopping list: milk, eggs\n")
    (imgs / "album.png").mkdir()  # a folder named like an image, listed on stdin
    (imgs / "bomb.png").write_bytes(_png_header(100_000, 100_000))
    (imgs / "bomb2.png").write_bytes(_png_header(20_000, 5_000))
    bad = {f"imgs/{name}": check for name, check in BAD.items()} | {"missing.png": None}
    if no_unreadable:
        del bad["imgs/secret.png"]
    else:
        Image.new("RGB", (8, 8)).save(imgs / "secret.png")
    fifo = imgs / "00_fifo.png"  # no one writes to it: reading it would wait for ever
    os.mkfifo(fifo)
    inputs_before = {p.name: p.read_bytes() for p in imgs.iterdir() if p.is_file() and p != fifo}
    if not no_unreadable:
        (imgs / "secret.png").chmod(0)  # unreadable without root's file privileges

    stdout_path, stderr_path = root / "stdout.txt", root / "stderr.txt"
    with open(stdout_path, "w") as out, open(stderr_path, "w") as err:
        process = _popen(
            ["imgs", "-", "missing.png", *MODEL, "--batch-size", "4", "--json", "--", "-x.png"],
            cwd=root,
            preexec_fn=preexec,
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=err,
        )
        try:
            process.stdin.write("imgs/album.png\n")
            process.stdin.close()
            returncode = process.wait(timeout=240)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    return SimpleNamespace(
        root=root,
        imgs=imgs,
        sizes=sizes_by_arg,
        bad=bad,
        no_unreadable=no_unreadable,
        returncode=returncode,
        stdout=stdout_path.read_text(),
        stderr=stderr_path.read_text(),
        inputs_before=inputs_before,
    )


def test_an_unreadable_file_was_part_of_the_run(messy_run):
    if messy_run.no_unreadable:
        pytest.skip(messy_run.no_unreadable)
    assert "imgs/secret.png: permission denied" in messy_run.stderr.splitlines()


def _json_lines(run) -> dict[str, dict]:
    by_input = {}
    for record in json_lines(run.stdout):
        key = record["input"]["path"]
        assert key not in by_input, f"{key} reported twice"
        by_input[key] = record
    return by_input


def test_each_failure_is_one_stderr_line_and_an_ok_false_record(messy_run):
    assert messy_run.returncode == 1, messy_run.stderr
    assert "Traceback" not in messy_run.stderr
    records = _json_lines(messy_run)
    assert set(records) == set(messy_run.sizes) | set(messy_run.bad), sorted(records)

    failures = {path: r for path, r in records.items() if not r["ok"]}
    assert set(failures) == set(messy_run.bad)
    for path, check in messy_run.bad.items():
        assert failures[path]["input"] == {"path": path, "width": None, "height": None,
                                           "sha256": None}
        assert failures[path]["files"] == [] and failures[path]["skipped"] is False
        reason = failures[path]["error"]
        if check is None:
            assert reason == "no such file"
        else:
            assert check(reason), f"{path}: unexpected reason {reason!r}"

    lines = _lines(messy_run.stderr)
    assert lines[0] == WARNING
    summary = lines[-1]
    problems = lines[1:-1]
    # exactly one line per failure, `path: reason` as in the JSON record, and nothing else
    assert sorted(problems) == sorted(f"{path}: {r['error']}" for path, r in failures.items())
    ok = len(messy_run.sizes)
    assert summary.startswith(f"camcli: {ok} done, {len(failures)} failed in "), summary


def test_failed_inputs_get_no_outputs_and_no_input_is_touched(messy_run):
    imgs = messy_run.imgs
    names = {p.name for p in imgs.iterdir()}
    for path in messy_run.bad:
        name = Path(path).name
        assert not [n for n in names if n.startswith(f"{name}.cam")], name
    assert not [n for n in names if n.endswith(".camcli-tmp")]
    assert not list((imgs / "album.png").iterdir())
    for name, data in messy_run.inputs_before.items():
        if name == "secret.png" and os.geteuid() != 0:
            continue  # unreadable to a user other than root
        assert (imgs / name).read_bytes() == data, name


def test_odd_formats_get_a_full_size_upright_overlay_and_a_record(messy_run):
    """Full size up to the default cap of 1,000 pixels on the longer side (the panorama)."""
    records = _json_lines(messy_run)
    for arg, size in messy_run.sizes.items():
        scale = min(1.0, 1000 / max(size))
        shown = (round(size[0] * scale), round(size[1] * scale))
        record = records[arg]
        assert record["ok"] is True, (arg, record)
        overlay = messy_run.root / f"{arg}.cam.png"
        assert record["files"] == [f"{arg}.cam.png", f"{arg}.cam.json"]
        with Image.open(overlay) as image:
            assert image.format == "PNG" and image.mode == "RGB"
            assert image.size == shown, arg
            image.load()  # the whole file decodes
        assert (record["input"]["width"], record["input"]["height"]) == size
        on_disk = json.loads((messy_run.root / f"{arg}.cam.json").read_text())
        assert on_disk == record_of(record)
        (explained,) = on_disk["explanations"]
        assert explained["overlay"] == overlay.name
        assert 0 <= explained["peak"]["x"] < size[0] and 0 <= explained["peak"]["y"] < size[1]


def _overlay(run, name: str) -> np.ndarray:
    with Image.open(run.imgs / f"{name}.cam.png") as image:
        return np.asarray(image.convert("RGB"), dtype=np.float64)


# With the default alpha 0.4 each overlay pixel is 0.6 * photo + 0.4 * heat colour, so a
# channel at 255 in the photo is >= 153 in the overlay and a channel at 0 is <= 102.
BRIGHT, DARK = 150, 105


def test_overlays_show_the_upright_first_frame_composited_on_white(messy_run):
    phone = _overlay(messy_run, "phone.jpg")  # 80 high x 40 wide, red in the top quarter
    assert phone.shape == (80, 40, 3)
    assert phone[2:18, :, 0].mean() > BRIGHT and phone[2:18, :, 2].mean() < DARK
    assert phone[25:, :, 0].mean() < DARK

    gif = _overlay(messy_run, "anim.gif")  # first frame red, later ones blue
    assert gif[..., 0].min() > BRIGHT and gif[..., 2].max() < DARK

    cmyk = _overlay(messy_run, "cmyk.jpg")
    assert cmyk[..., 0].min() > BRIGHT and cmyk[..., 1].max() < DARK

    for name in ("rgba.png", "palette.png"):  # transparent left half -> white, right half blue
        picture = _overlay(messy_run, name)
        assert picture[:, :13].min() > BRIGHT, name
        assert picture[:, 17:, 0].max() < DARK and picture[:, 17:, 2].min() > BRIGHT, name

    deep = _overlay(messy_run, "deep16.png")  # 16-bit: 60000 is bright, 200 is nearly black
    assert deep[:, :14].min() > 135 and deep[:, 18:].max() < DARK

    pano = _overlay(messy_run, "pano.jpg")  # all 4000 px, capped at 1000 wide: red left half
    assert pano.shape == (75, 1000, 3)
    assert pano[:, :475, 0].mean() > BRIGHT and pano[:, 525:, 0].mean() < DARK


# --------------------------------------------------------------------------- one file, many names


@pytest.fixture(scope="module")
def tree_started(tmp_path_factory):
    """The tree below and camcli started on it (see ``tree_run``, which waits for it)."""
    root = tmp_path_factory.mktemp("tree")
    tree = root / "tree"
    (tree / "sub").mkdir(parents=True)
    Image.new("RGB", (10, 10), (1, 1, 1)).save(tree / "top.png")
    Image.new("RGB", (12, 8), (2, 2, 2)).save(tree / "sub" / "inner.png")
    Image.new("RGB", (40, 40), (3, 3, 3)).save(tree / "big.png")  # 1,600 px > --max-pixels
    _truncated(tree / "cut.png", "PNG", size=(30, 30))
    (tree / "alias.png").symlink_to("top.png")
    (tree / "sub" / "loop").symlink_to("..", target_is_directory=True)
    (tree / "sub" / "self").symlink_to(".", target_is_directory=True)
    args = [
        "tree",
        "--recursive",
        "tree/top.png",
        "./tree/top.png",
        "tree/sub/../top.png",
        "tree/sub/loop/sub/self/inner.png",
        "tree/*.png",  # globs are expanded by camcli (quoted in a shell)
        "tree/**/*.png",
        "tree/sub",
        *MODEL,
        "--max-pixels",
        "1000",
        "--json",
        "--debug",
    ]
    process = _popen(args, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    started = SimpleNamespace(root=root, tree=tree, args=args, process=process,
                              deadline=time.monotonic() + 60)
    yield started
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def tree_run(tree_started):
    process = tree_started.process
    try:  # glob's own ** never ended on the loop: 60 s from the start are plenty
        stdout, stderr = process.communicate(
            timeout=max(1.0, tree_started.deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    run = subprocess.CompletedProcess(tree_started.args, process.returncode, stdout, stderr)
    return SimpleNamespace(root=tree_started.root, tree=tree_started.tree, run=run)


def test_a_file_reached_many_ways_is_processed_once(tree_run):
    run = tree_run.run
    assert run.returncode == 1, run.stderr
    records = json_lines(run.stdout)
    by_real = {}
    for record in records:
        path = record["input"]["path"]
        real = os.path.realpath(tree_run.root / path)
        assert real not in by_real, f"{path} processed twice (also as {by_real.get(real)})"
        by_real[real] = record
    tree = os.path.realpath(tree_run.tree)
    names = {os.path.relpath(real, tree): record for real, record in by_real.items()}
    assert set(names) == {"top.png", "sub/inner.png", "big.png", "cut.png"}
    assert names["top.png"]["ok"] and names["sub/inner.png"]["ok"]
    assert names["cut.png"]["error"].startswith("cannot decode image:")
    big = names["big.png"]["error"]
    assert big.startswith("refused: 40×40 = 1,600 pixels exceeds the limit of 1,000")
    assert "--max-pixels" in big
    assert "camcli: 2 done, 2 failed in " in run.stderr
    # one overlay and one record per file, beside the first name it was reached by
    written = sorted(p.name for p in tree_run.tree.rglob("*.cam.*"))
    assert len(written) == 4, written


def test_debug_shows_where_each_failure_came_from(tree_run):
    stderr = tree_run.run.stderr
    # the `path: reason` line is still there, followed by the traceback behind it
    assert "tree/cut.png: cannot decode image:" in stderr
    assert "tree/big.png: refused: 40×40" in stderr
    assert stderr.count("Traceback (most recent call last)") >= 2, stderr[-3000:]
    assert "InputError" in stderr
    # the decoder's own exception, the cause of the one-line reason, is shown
    assert "OSError: image file is truncated" in stderr
