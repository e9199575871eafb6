"""Finding inputs and decoding them (camcli.images); no TensorFlow involved."""

from __future__ import annotations

import itertools
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camcli.errors import InputError
from camcli.images import discover, read_for_model

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def _save(path: Path, size=(8, 6), colour=RED, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, **kwargs)
    return path


def _names(paths) -> list[str]:
    return [Path(p).name for p in paths]


# --------------------------------------------------------------------------- discovery


def test_files_are_yielded_in_the_order_given(tmp_path):
    b = _save(tmp_path / "b.png")
    a = _save(tmp_path / "a.jpg")
    odd = tmp_path / "scan.dat"  # named explicitly: tried whatever its extension
    odd.write_bytes(b"x")
    assert list(discover([str(b), str(a), str(odd)])) == [b, a, odd]


def test_folder_yields_its_images_sorted_and_recursive_descends(tmp_path):
    _save(tmp_path / "b.PNG")
    _save(tmp_path / "a.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    _save(tmp_path / "sub" / "c.webp")
    _save(tmp_path / "sub" / "deeper" / "d.bmp")

    assert _names(discover([str(tmp_path)])) == ["a.jpg", "b.PNG"]
    assert _names(discover([str(tmp_path)], recursive=True)) == [
        "a.jpg",
        "b.PNG",
        "c.webp",
        "d.bmp",
    ]


def test_glob_patterns_expand_sorted_and_matched_folders_are_walked(tmp_path):
    _save(tmp_path / "x2.png")
    _save(tmp_path / "x1.png")
    _save(tmp_path / "y.jpg")
    _save(tmp_path / "xdir" / "inner.png")

    assert _names(discover([str(tmp_path / "x*.png")])) == ["x1.png", "x2.png"]
    assert _names(discover([str(tmp_path / "x*")])) == ["x1.png", "x2.png", "inner.png"]
    assert list(discover([str(tmp_path / "nothing*.png")])) == []


def test_dash_reads_paths_from_stdin_skipping_blank_lines(tmp_path):
    a = _save(tmp_path / "a.png")
    b = _save(tmp_path / "b b.jpg")  # spaces inside a path survive
    lines = iter([f"{a}\n", "\n", "   \n", f"{b}\r\n"])
    assert list(discover(["-"], stdin=lines)) == [a, b]


def test_a_file_reached_twice_is_yielded_once(tmp_path):
    a = _save(tmp_path / "a.png")
    b = _save(tmp_path / "b.png")
    link = tmp_path / "link.png"
    link.symlink_to(a)

    found = list(
        discover([str(a), str(a), str(link), str(tmp_path / "*.png"), str(tmp_path / "a*")])
    )
    assert found == [a, b]  # first name wins; the symlink and the second glob add nothing
    assert list(discover([str(tmp_path), str(b)])) == [a, b]


def test_recursive_walk_through_a_symlink_loop_terminates(tmp_path):
    _save(tmp_path / "top.png")
    _save(tmp_path / "sub" / "inner.png")
    (tmp_path / "sub" / "loop").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "sub" / "self").symlink_to(tmp_path / "sub", target_is_directory=True)

    found = list(itertools.islice(discover([str(tmp_path)], recursive=True), 50))
    assert sorted(_names(found)) == ["inner.png", "top.png"]


def test_camcli_outputs_and_temp_files_are_never_inputs(tmp_path):
    x = _save(tmp_path / "x.jpg")
    own = [
        "x.jpg.cam.png",
        "x.jpg.cam.json",
        "x.jpg.cam.jpg",
        "x.jpg.cam.webp",
        "x.jpg.cam.npy",
        "x.jpg.cam.281_tabby.png",
        "x.jpg.cam.281_tabby.npy",
        ".x.jpg.cam.png.k2j4h1.camcli-tmp",
    ]
    for name in own:
        _save(tmp_path / name, format="PNG")

    assert list(discover([str(tmp_path)])) == [x]
    assert list(discover([str(tmp_path / "*")])) == [x]
    # not even when named explicitly or listed on stdin
    assert list(discover([str(tmp_path / n) for n in own])) == []
    assert list(discover(["-"], stdin=[str(tmp_path / own[0])])) == []


def test_a_missing_path_is_still_yielded_so_it_fails_later(tmp_path):
    missing = tmp_path / "gone.jpg"
    assert list(discover([str(missing)])) == [missing]
    with pytest.raises(InputError) as info:
        read_for_model(missing, (8, 8))
    assert info.value.path == str(missing)
    assert info.value.reason == "no such file"


# --------------------------------------------------------------------------- decoding


def test_rgb_keeps_its_pixels_and_reports_its_size(tmp_path):
    array = np.zeros((6, 10, 3), np.uint8)
    array[:, :5] = RED
    array[:, 5:] = BLUE
    path = tmp_path / "rgb.png"
    Image.fromarray(array).save(path)

    decoded = read_for_model(path, (6, 10))
    assert decoded.size == (10, 6)
    assert decoded.pixels.dtype == np.uint8
    np.testing.assert_array_equal(decoded.pixels, array)
    assert decoded.data == path.read_bytes()


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 0)  # fully transparent red: must become white, not red or black
    rgba[0, 1] = (0, 0, 255, 255)  # opaque blue
    rgba[1, 0] = (0, 0, 0, 128)  # half-transparent black: mid grey
    rgba[1, 1] = (0, 255, 0, 255)
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)

    pixels = read_for_model(path, (2, 2)).pixels
    assert pixels.shape == (2, 2, 3)
    assert tuple(pixels[0, 0]) == WHITE
    assert tuple(pixels[0, 1]) == BLUE
    assert all(abs(int(v) - 127) <= 1 for v in pixels[1, 0])
    assert tuple(pixels[1, 1]) == GREEN


def test_palette_with_transparency_is_composited_on_white(tmp_path):
    image = Image.new("P", (2, 1), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # entry 0 black, entry 1 red
    image.putpixel((1, 0), 1)
    path = tmp_path / "palette.png"
    image.save(path, transparency=0)  # entry 0 (black) is transparent

    pixels = read_for_model(path, (1, 2)).pixels
    assert tuple(pixels[0, 0]) == WHITE
    assert tuple(pixels[0, 1]) == RED


def test_grayscale_becomes_three_equal_channels_or_stays_one(tmp_path):
    array = np.array([[0, 100], [200, 255]], np.uint8)
    path = tmp_path / "gray.png"
    Image.fromarray(array, "L").save(path)

    rgb = read_for_model(path, (2, 2)).pixels
    assert rgb.shape == (2, 2, 3)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[:, :, channel], array)
    single = read_for_model(path, (2, 2), channels=1).pixels
    assert single.shape == (2, 2, 1)
    np.testing.assert_array_equal(single[:, :, 0], array)


def test_16_bit_png_is_scaled_from_the_16_bit_range(tmp_path):
    array = np.array([[0, 1000, 32768, 65535]], np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(array).save(path)
    assert Image.open(path).mode.startswith("I")  # the premise: Pillow reads it as 16-bit

    pixels = read_for_model(path, (1, 4)).pixels[0, :, 0]
    # v / 65535 * 255, rounded: a dark 16-bit value must not be read as an 8-bit one
    assert pixels.tolist() == [0, 4, 128, 255]

    dark = tmp_path / "dark.png"
    Image.fromarray(np.full((2, 2), 200, np.uint16)).save(dark)
    assert read_for_model(dark, (2, 2)).pixels.max() <= 1


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 8), (0, 255, 255, 0)).save(path, quality=95)  # red in CMYK
    assert Image.open(path).mode == "CMYK"

    pixels = read_for_model(path, (8, 16)).pixels
    assert pixels.shape == (8, 16, 3)
    red, green, blue = (int(v) for v in pixels[4, 8])
    assert red > 240 and green < 20 and blue < 20


def test_animated_gif_uses_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in (RED, BLUE, GREEN)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(path).n_frames == 3

    decoded = read_for_model(path, (8, 8))
    assert decoded.size == (8, 8)
    assert {tuple(p) for p in decoded.pixels.reshape(-1, 3)} == {RED}


def test_exif_orientation_6_gives_an_upright_image(tmp_path):
    # Stored 400 wide x 200 high, red in the left quarter. Orientation 6 means "rotate 90°
    # clockwise to display", so the upright picture is 200 x 400 with red in its top quarter.
    stored = np.zeros((200, 400, 3), np.uint8)
    stored[:, :100] = RED
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)

    for overlay_side in (None, 100):  # JPEG draft decoding is used at these sizes
        decoded = read_for_model(path, (64, 32), overlay_side=overlay_side)
        assert decoded.size == (200, 400)
        assert decoded.pixels.shape == (64, 32, 3)
        pixels = decoded.pixels
        top, bottom = pixels[4:12].mean(axis=(0, 1)), pixels[30:60].mean(axis=(0, 1))
        assert top[0] > 200 and top[1] < 40 and top[2] < 40
        assert bottom.max() < 30
    picture = np.asarray(decoded.picture)  # the overlay's, decoded with the model's view
    assert picture.shape == (100, 50, 3)
    assert picture[:20, :, 0].min() > 200 and picture[30:].max() < 30


def test_one_pixel_image(tmp_path):
    path = _save(tmp_path / "dot.png", size=(1, 1), colour=(10, 20, 30))
    decoded = read_for_model(path, (32, 32))
    assert decoded.size == (1, 1)
    assert decoded.pixels.shape == (32, 32, 3)
    assert {tuple(p) for p in decoded.pixels.reshape(-1, 3)} == {(10, 20, 30)}


def test_panorama_is_squeezed_whole_without_crop(tmp_path):
    array = np.zeros((300, 4000, 3), np.uint8)
    array[:, :2000] = RED
    array[:, 2000:] = BLUE
    path = tmp_path / "pano.jpg"
    Image.fromarray(array).save(path, quality=95)

    decoded = read_for_model(path, (128, 128))
    assert decoded.size == (4000, 300)
    assert decoded.pixels.shape == (128, 128, 3)
    left, right = decoded.pixels[64, 4].astype(int), decoded.pixels[64, 123].astype(int)
    assert left[0] > 230 and left[2] < 30  # both ends of the panorama are in view
    assert right[2] > 230 and right[0] < 30


# --------------------------------------------------------------------------- failures


def _reason(path: Path, **kwargs) -> str:
    with pytest.raises(InputError) as info:
        read_for_model(path, (16, 16), **kwargs)
    assert info.value.path == str(path)
    assert str(info.value) == f"{path}: {info.value.reason}"
    return info.value.reason


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert _reason(path) == "empty file (0 bytes)"


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a photo\n")
    assert _reason(path) == "not an image file Pillow can read"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file(tmp_path, fmt):
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    whole = tmp_path / "whole"
    Image.fromarray(noise).save(whole, format=fmt)
    data = whole.read_bytes()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    assert _reason(path).startswith("cannot decode image:")


def test_directory_and_missing_file(tmp_path):
    folder = tmp_path / "album.jpg"
    folder.mkdir()
    assert _reason(folder) == "is a directory, not an image"
    assert _reason(tmp_path / "missing.png") == "no such file"


def _png_header(width: int, height: int) -> bytes:
    """A PNG that only declares its size: signature, IHDR and IEND, no pixel data at all."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "width, height",
    [(100_000, 100_000), (20_000, 5_000)],  # above Pillow's own hard limit; between the limits
)
def test_huge_declared_size_is_refused_before_decoding(tmp_path, width, height):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(width, height))
    assert _reason(path).startswith("refused")


def test_small_max_pixels_refuses_with_the_numbers(tmp_path):
    path = _save(tmp_path / "a.png", size=(20, 10))
    reason = _reason(path, max_pixels=199)
    assert reason.startswith("refused")
    assert "200" in reason and "199" in reason and "--max-pixels" in reason
    assert read_for_model(path, (4, 4), max_pixels=200).size == (20, 10)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads unreadable files")
def test_unreadable_file(tmp_path):
    path = _save(tmp_path / "secret.png")
    path.chmod(0)
    assert _reason(path) == "permission denied"


def test_the_default_pixel_limit_is_pillows():
    """camcli.limits spells Pillow's decompression-bomb limit out, so `camcli --help` needs no
    Pillow; the two must not drift."""
    from PIL import Image

    from camcli.limits import DEFAULT_MAX_PIXELS

    assert DEFAULT_MAX_PIXELS == Image.MAX_IMAGE_PIXELS


# --------------------------------------------------------------------------- bounded reads


def test_devices_and_fifos_fail_at_once_without_being_read(tmp_path):
    """/dev/zero behind a symlink grew memory without end, and a FIFO made the read wait for
    a writer for ever: only regular files are read."""
    zero = tmp_path / "zero.jpg"
    zero.symlink_to("/dev/zero")
    assert _reason(zero) == "not a regular file but a character device: not read"
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    assert _reason(fifo) == "not a regular file but a named pipe (FIFO): not read"


def test_the_read_limit_comes_from_max_pixels_or_is_given(tmp_path):
    from camcli.limits import DEFAULT_READ_LIMIT, read_limit

    # an uncompressed 8-bit RGBA image at the pixel limit, plus 16 MiB of metadata
    assert read_limit(1000) == 4000 + (16 << 20)
    assert DEFAULT_READ_LIMIT == 89_478_485 * 4 + (16 << 20)
    assert read_limit(0) == read_limit(None) == 2 * 89_478_485 * 4 + (16 << 20)
    assert read_limit(1000, 5) == 5
    path = _save(tmp_path / "a.png", size=(20, 10))
    size = path.stat().st_size
    assert _reason(path, max_bytes=size - 1) == (
        f"larger than the read limit of {size - 1:,} bytes (--max-input-bytes)"
    )
    assert read_for_model(path, (4, 4), max_bytes=size).size == (20, 10)
    # a file bigger than the limit derived from a small --max-pixels is never read whole
    padded = tmp_path / "padded.png"
    padded.write_bytes(path.read_bytes() + bytes(read_limit(200)))
    assert _reason(padded, max_pixels=200).startswith("larger than the read limit of 16,778,")


def test_a_file_growing_past_the_limit_while_read_is_refused(tmp_path):
    from camcli.images import read_bytes

    fifo_like = tmp_path / "grows.jpg"  # what fstat says is stale: the read itself is capped
    fifo_like.write_bytes(b"x" * 100)
    assert read_bytes(fifo_like, 100) == b"x" * 100
    with pytest.raises(InputError, match="larger than the read limit of 99 bytes"):
        read_bytes(fifo_like, 99)


def test_folders_can_stay_inside_their_tree(tmp_path):
    """-r follows symlinked folders out of the tree by default; follow_symlinks=False (the
    CLI's --no-follow-symlinks) takes nothing that is a symbolic link inside the folder."""
    outside = _save(tmp_path / "outside" / "private.png")
    _save(tmp_path / "elsewhere" / "other.png")
    tree = tmp_path / "tree"
    _save(tree / "own.png")
    _save(tree / "sub" / "deep.png")
    (tree / "sub" / "away").symlink_to(outside.parent)
    (tree / "link.png").symlink_to(tmp_path / "elsewhere" / "other.png")
    followed = _names(discover([str(tree)], recursive=True))
    assert sorted(followed) == ["deep.png", "link.png", "own.png", "private.png"]
    inside = list(discover([str(tree)], recursive=True, follow_symlinks=False))
    assert sorted(_names(inside)) == ["deep.png", "own.png"]
    assert all(not p.is_symlink() and tree in p.parents for p in inside)
    # a link named on the command line is what the user asked for: still followed
    named = discover([str(tree / "link.png")], follow_symlinks=False)
    assert _names(named) == ["link.png"]
