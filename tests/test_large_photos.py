"""Phone-sized photos: the overlay's size cap, and decoding at reduced scale for the model.

- The overlay's longer side is capped at :data:`camcli.render.DEFAULT_MAX_OVERLAY_SIDE` by
  default, never upscaled, kept whole with ``max_overlay_side=0``; the record says the overlay's
  size, and everything else in it (the input's size, peak and centroid in the photo's own
  pixels) is the same whatever the cap.
- The model's view decoded at reduced scale (JPEG DCT scaling, box reduction for other
  formats) is equivalent to a full decode resized in this file (Pillow's antialiased bilinear
  over every pixel): the bundled ImageNet MobileNet gives the same top-1 class and maps with
  Pearson r >= 0.99, on the sample photos and on 12-megapixel (4032x3024) JPEGs made from them.

The bundled weights are in the package: nothing is downloaded.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import schema_errors
from PIL import Image, ImageOps

from camcli import images, render
from camcli.api import Explainer
from camcli.errors import UsageError
from camcli.pipeline import OutputOptions

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted(p for p in (ROOT / "sample_images").iterdir() if p.suffix in (".png", ".jpg"))
PHONE = (4032, 3024)  # a 12-megapixel phone photo
MAP_R = 0.99  # the least Pearson r between a map from the scaled and from the full decode


@pytest.fixture(scope="module")
def bundled():
    return Explainer(model="mobilenet_v1_0.25_224", weights="imagenet", batch_size=8)


def _jpeg(picture: Image.Image, size=None, **options) -> bytes:
    buffer = io.BytesIO()
    (picture.resize(size, Image.Resampling.BICUBIC) if size else picture).save(
        buffer, "JPEG", quality=92, **options
    )
    return buffer.getvalue()


def _reference_view(data: bytes, size=(224, 224)) -> np.ndarray:
    """The model's view from a full decode: every pixel, upright, resized in one bilinear pass."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        upright = ImageOps.exif_transpose(image).convert("RGB")
    return np.asarray(upright.resize(size, Image.Resampling.BILINEAR))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


# --------------------------------------------------------------------------- the cap


def _photo_folder(folder: Path) -> Path:
    folder.mkdir()
    rocket = Image.open(ROOT / "sample_images" / "rocket.jpg").convert("RGB")
    (folder / "wide.jpg").write_bytes(_jpeg(rocket, (2400, 1500)))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 1800 wide, 1200 high; upright 1200 x 1800
    (folder / "turned.jpg").write_bytes(_jpeg(rocket, (1800, 1200), exif=exif))
    (folder / "small.jpg").write_bytes(_jpeg(rocket, (600, 400)))
    return folder


@pytest.fixture(scope="module")
def capped_runs(bundled, tmp_path_factory):
    """The same three photos explained by default, with cap 0 (full size) and cap 500."""
    folder = _photo_folder(tmp_path_factory.mktemp("caps") / "in")
    runs = {}
    for cap in (None, 0, 500):
        out = folder.parent / f"out-{cap}"
        options = OutputOptions(out_dir=out) if cap is None else OutputOptions(
            out_dir=out, max_overlay_side=cap
        )
        results = {Path(r.path).name: r for r in bundled.run([str(folder)], options)}
        assert all(r.ok for r in results.values()), [r.error for r in results.values()]
        runs[cap] = {name: r.record for name, r in results.items()}
        runs[cap, "files"] = {name: r.files for name, r in results.items()}
    return runs


def _overlay(files: tuple[Path, ...], record: dict) -> tuple[tuple[int, int], dict]:
    (entry,) = record["explanations"]
    (path,) = [f for f in files if f.name == entry["overlay"]]
    with Image.open(path) as overlay:
        return overlay.size, entry


@pytest.mark.parametrize(
    ("name", "default", "full", "at_500"),
    [
        ("wide.jpg", (1000, 625), (2400, 1500), (500, 313)),
        ("turned.jpg", (667, 1000), (1200, 1800), (333, 500)),
        ("small.jpg", (600, 400), (600, 400), (500, 333)),  # never upscaled to 1000
    ],
)
def test_overlay_longer_side_is_capped_and_the_record_says_its_size(
    capped_runs, name, default, full, at_500
):
    assert render.DEFAULT_MAX_OVERLAY_SIDE == 1000
    for cap, expected in ((None, default), (0, full), (500, at_500)):
        records = capped_runs[cap]
        size, entry = _overlay(capped_runs[cap, "files"][name], records[name])
        assert size == expected, (cap, name, size)
        assert (entry["overlay_width"], entry["overlay_height"]) == size
        assert schema_errors(records[name], "record_file") == []
        assert (records[name]["input"]["width"], records[name]["input"]["height"]) == full


def test_the_json_stays_in_the_photos_own_pixels_whatever_the_cap(capped_runs):
    """Peak and centroid are in the photo's pixels at every cap: the same class, the same
    place (the model's view is decoded with the overlay, so the cap may move a score or a
    coordinate by a hair, never by a map cell)."""
    default = capped_runs[None]
    for cap in (0, 500):
        records = capped_runs[cap]
        for name, record in records.items():
            assert record["settings_fingerprint"] != default[name]["settings_fingerprint"]
            assert record["input"] == default[name]["input"]
            (entry,), (reference,) = record["explanations"], default[name]["explanations"]
            assert entry["index"] == reference["index"], (cap, name)
            cell = max(record["input"]["width"], record["input"]["height"]) / 7
            for point in ("peak", "centroid"):
                for axis in ("x", "y"):
                    assert abs(entry[point][axis] - reference[point][axis]) < cell / 2, (
                        cap, name, point, entry[point], reference[point])
    wide = default["wide.jpg"]["explanations"][0]
    assert 0 <= wide["peak"]["x"] < 2400 and 0 <= wide["peak"]["y"] < 1500
    assert wide["peak"]["x"] > 1000 or wide["centroid"]["x"] > 1000  # beyond the overlay's 1000


def test_save_heatmap_is_unaffected_by_the_cap(bundled, tmp_path):
    """The .npy map is the model's own map (7x7), not the overlay's size, at every cap."""
    folder = _photo_folder(tmp_path / "in")
    for cap in (None, 0, 300):
        out = tmp_path / f"out-{cap}"
        options = OutputOptions(out_dir=out, save_heatmap=True, **(
            {} if cap is None else {"max_overlay_side": cap}))
        for result in bundled.run([str(folder / "wide.jpg")], options):
            (entry,) = result.record["explanations"]
            (path,) = [f for f in result.files if f.name == entry["heatmap"]]
            saved = np.load(path)
            assert saved.shape == (7, 7) and np.array_equal(saved, result.cams[0]), cap


def test_a_negative_cap_is_a_usage_error():
    with pytest.raises(UsageError, match="--max-overlay-side must be 0"):
        OutputOptions(max_overlay_side=-1)


def test_none_and_zero_both_keep_full_resolution_and_fingerprint_alike():
    assert OutputOptions(max_overlay_side=None).settings() == OutputOptions(
        max_overlay_side=0
    ).settings()


# --------------------------------------------------------------------------- scaled decoding


@pytest.fixture(scope="module")
def views() -> dict[str, bytes]:
    """name -> file bytes: the sample photos as they are, each as a 12 MP JPEG (DCT scaling)
    and one as a 12 MP PNG (decoded whole, then box-reduced)."""
    views = {}
    for path in SAMPLES:
        views[path.name] = path.read_bytes()
        with Image.open(path) as picture:
            views[f"{path.stem}-12mp.jpg"] = _jpeg(picture.convert("RGB"), PHONE)
    buffer = io.BytesIO()
    with Image.open(SAMPLES[0]) as picture:
        picture.convert("RGB").resize(PHONE, Image.Resampling.BICUBIC).save(
            buffer, "PNG", compress_level=0
        )
    views[f"{SAMPLES[0].stem}-12mp.png"] = buffer.getvalue()
    return views


@pytest.mark.parametrize("overlay_side", [None, render.DEFAULT_MAX_OVERLAY_SIDE])
def test_the_models_scaled_decode_is_equivalent_to_a_full_decode(
    bundled, tmp_path, overlay_side, views
):
    """For the model alone and decoded together with the default overlay (the overlay's picture
    kept): one 1/4-scale frame of a 12 MP JPEG either way."""
    scaled, full = [], []
    for name, data in views.items():
        path = tmp_path / name
        path.write_bytes(data)
        decoded = images.read_for_model(path, (224, 224), overlay_side=overlay_side)
        scaled.append(decoded.pixels)
        full.append(_reference_view(data))
        if overlay_side:
            assert max(decoded.picture.size) == min(overlay_side, max(decoded.size))
            assert decoded.picture.size == images.read_full(data, overlay_side).size
    scaled, full = np.stack(scaled), np.stack(full)
    assert not np.array_equal(scaled, full)  # the decodes do differ, a little
    mean_error = np.abs(scaled.astype(np.int16) - full).mean(axis=(1, 2, 3))
    assert mean_error.max() < 1.5, dict(zip(views, mean_error.round(2), strict=True))

    ours, reference = bundled.explain_arrays(scaled), bundled.explain_arrays(full)
    assert list(ours.targets[:, 0]) == list(reference.targets[:, 0]), list(views)
    for name, a, b in zip(views, ours.cams[:, 0], reference.cams[:, 0], strict=True):
        assert _pearson(a, b) >= MAP_R, (name, _pearson(a, b))


def test_the_models_view_does_not_depend_on_the_overlays_size(views, tmp_path):
    # explain (any --max-overlay-side, with or without outputs) and the audit must feed the
    # model the same pixels, or their scores would disagree in the last digits
    for name, data in views.items():
        path = tmp_path / name
        path.write_bytes(data)
        first, *others = (images.read_for_model(path, (224, 224), overlay_side=side)
                          for side in (None, 0, 640, 1000, 1024, 4000))
        for other in others:
            np.testing.assert_array_equal(other.pixels, first.pixels, err_msg=name)
        small = _jpeg(Image.open(io.BytesIO(data)).convert("RGB").resize((89, 70)))
        path.write_bytes(small)
        tiny = [images.read_for_model(path, (32, 32), overlay_side=side).pixels
                for side in (None, 1000)]
        np.testing.assert_array_equal(*tiny, err_msg=name)


def test_a_12mp_jpeg_is_decoded_at_the_smallest_scale_covering_the_need():
    data = _jpeg(Image.open(SAMPLES[0]).convert("RGB"), PHONE)
    for longer, decoded in ((224, (504, 378)), (1000, (1008, 756)), (1024, (2016, 1512)),
                            (2100, PHONE)):
        image = Image.open(io.BytesIO(data))
        image.draft("RGB", images.draft_request(image.size, longer))
        assert image.size == decoded, longer
    assert images.read_full(data, 1000).size == (1000, 750)
    assert images.read_full(data, 1024).size == (1024, 768)


def test_capped_overlay_of_a_rotated_jpeg_is_upright():
    """EXIF orientation 6 at reduced scale: red on the stored left is the upright top."""
    stored = np.zeros((1200, 2400, 3), np.uint8)
    stored[:, :600] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _jpeg(Image.fromarray(stored), exif=exif)
    picture = np.asarray(images.read_full(data, 600))
    assert picture.shape == (600, 300, 3)
    top, bottom = picture[10:140].mean(axis=(0, 1)), picture[160:].mean(axis=(0, 1))
    assert top[0] > 200 and top[1] < 40 and bottom.max() < 30


def test_capped_overlay_of_a_transparent_png_is_composited_on_white():
    rgba = np.zeros((800, 1600, 4), np.uint8)
    rgba[..., 2] = 255
    rgba[:, 800:, 3] = 255  # left half transparent, right half opaque blue
    buffer = io.BytesIO()
    Image.fromarray(rgba).save(buffer, "PNG")
    picture = np.asarray(images.read_full(buffer.getvalue(), 400))
    assert picture.shape == (200, 400, 3)
    assert (picture[:, :190] == 255).all() and (picture[:, 210:] == (0, 0, 255)).all()

