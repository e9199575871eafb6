"""Output naming, atomic writes and the JSON encoding (camcli.outputs); no TensorFlow."""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
from pathlib import Path
from unittest import mock

import pytest
from cli_helpers import hold_flock

from camcli import storage
from camcli.api import OutputOptions
from camcli.errors import InputError, UnknownNameError, UsageError
from camcli.images import discover
from camcli.labels import imagenet_labels
from camcli.outputs import (
    OutputPaths,
    atomic_write,
    is_camcli_output,
    locked,
    remove_stale_lock,
    settings_fingerprint,
    sha256,
    to_json_bytes,
)


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.endswith(".camcli-tmp")]


# --------------------------------------------------------------------------- naming


def test_outputs_sit_beside_the_input_and_keep_its_full_name():
    paths = OutputPaths.for_input(Path("photos/cat.jpg"))
    assert paths.record == Path("photos/cat.jpg.cam.json")
    assert paths.overlay(281, "tabby", several=False) == Path("photos/cat.jpg.cam.png")
    assert paths.overlay(281, "tabby", several=False, fmt="webp") == Path("photos/cat.jpg.cam.webp")
    assert paths.heatmap(281, "tabby", several=False) == Path("photos/cat.jpg.cam.npy")


def test_several_classes_get_labelled_names():
    paths = OutputPaths.for_input(Path("cat.jpg"))
    assert paths.overlay(281, "tabby", several=True) == Path("cat.jpg.cam.281_tabby.png")
    assert paths.heatmap(285, "Egyptian_cat", several=True) == Path(
        "cat.jpg.cam.285_Egyptian_cat.npy"
    )
    names = {paths.overlay(i, "x", several=True) for i in range(5)}
    assert len(names) == 5
    # characters that do not belong in file names are replaced
    odd = paths.overlay(7, "potter's wheel/\u00e9", several=True).name
    assert odd.startswith("cat.jpg.cam.7_potter_s_wheel") and odd.endswith(".png")
    assert "/" not in odd and " " not in odd and "'" not in odd


def test_same_stem_different_extension_never_collide():
    def all_outputs(name: str) -> set[Path]:
        p = OutputPaths.for_input(Path("d") / name)
        files = {p.record}
        for several in (False, True):
            for fmt in ("png", "jpg", "webp"):
                files.add(p.overlay(1, "goldfish", several, fmt))
            files.add(p.heatmap(1, "goldfish", several))
        return files

    jpg, png = all_outputs("a.jpg"), all_outputs("a.png")
    assert len(jpg) == len(png) == 9
    assert not jpg & png
    # and no output of one input is the other input
    assert Path("d/a.png") not in jpg and Path("d/a.jpg") not in png


def test_every_name_camcli_writes_is_recognised_as_its_own():
    labels = imagenet_labels()
    paths = OutputPaths.for_input(Path("x.jpg"))
    written = [paths.record]
    for index in range(len(labels)):
        label = labels.name(index)
        for fmt in ("png", "jpg", "webp"):
            written.append(paths.overlay(index, label, True, fmt))
        written.append(paths.heatmap(index, label, True))
    for several in (False, True):
        written.append(paths.overlay(3, labels.name(3), several))
    unrecognised = [p.name for p in written if not is_camcli_output(p.name)]
    assert unrecognised == []


@pytest.mark.parametrize(
    "name", [
        "a.jpg", "a.png", "camera.png", "scam.png", "a.camera.png", "a.cam", "a.jpg.cam.txt",
        "door.cam.jpg", "security.cam.png",
    ]
)
def test_ordinary_images_are_not_taken_for_outputs(name):
    assert not is_camcli_output(name)


def test_out_dir_mirrors_paths_relative_to_the_current_folder(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    out = Path("out")

    relative = OutputPaths.for_input(Path("photos/2024/cat.jpg"), out)
    assert relative.record == out / "photos/2024/cat.jpg.cam.json"
    absolute_inside = OutputPaths.for_input(work / "photos/2024/cat.jpg", out)
    assert absolute_inside.record == relative.record
    dotted = OutputPaths.for_input(Path("./photos/../photos/2024/cat.jpg"), out)
    assert dotted.record == relative.record

    # Outside the current folder: the absolute path is mirrored whole, so two inputs with the
    # same name in different folders still get different outputs.
    outside = OutputPaths.for_input(tmp_path / "elsewhere" / "cat.jpg", out)
    anchor = Path(tmp_path.anchor)
    assert outside.record == out / (tmp_path / "elsewhere").relative_to(anchor) / "cat.jpg.cam.json"
    parent = OutputPaths.for_input(Path("../elsewhere/cat.jpg"), out)
    assert parent.record == outside.record


HOSTILE_URLS = {
    "s3://bucket/ok/../../../../tmp/x/victim/evil.jpg": "a '..' segment",
    "http://127.0.0.1:8000/a/../../../tmp/x/y.jpg": "a '..' segment",
    "s3://bucket/..": "a '..' segment",
    "http://../x.jpg": "a '..' segment",  # the host itself
    "s3://bucket/a/./x.jpg": "a '.' segment",  # would share a.jpg's outputs with a/x.jpg
    "s3://bucket//etc/passwd.jpg": "an empty segment",  # pathlib: out / "/etc" is /etc
    "s3://bucket/a//x.jpg": "an empty segment",
    "s3://bucket/a/": "an empty segment",
    "s3:///x.jpg": "no host or bucket",
    "gs:///../x.jpg": "no host or bucket",
    "s3://bucket/a\\..\\..\\x.jpg": "backslash",
    "s3://bucket/C:\\x.jpg": "backslash",
    "s3://bucket/a/\x00.jpg": "control character",
    "s3://bucket/a/b\nc.jpg": "control character",  # urlsplit drops the newline
    "s3://bucket/a/\t/x.jpg": "control character",
    "s3://bucket/\x1b[2J.jpg": "control character",
}


@pytest.mark.parametrize("out", [Path("out"), "s3://cams/run/"], ids=["folder", "url"])
@pytest.mark.parametrize("url", list(HOSTILE_URLS))
def test_keys_that_cannot_stay_under_out_dir_fail_with_the_reason(url, out, tmp_path,
                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    location = storage.location(url)
    with pytest.raises(InputError) as failure:
        OutputPaths.for_input(location, storage.location(out))
    assert failure.value.path == str(location)
    assert HOSTILE_URLS[url] in failure.value.reason
    assert "--out-dir" in failure.value.reason and "\n" not in failure.value.reason


ODD_BUT_SAFE = [
    "s3://bucket/...jpg", "s3://bucket/..x/x..jpg", "s3://bucket/a%2F..%2F..%2Fx.jpg",
    "http://127.0.0.1:8000/%2e%2e/%2e%2e/x.jpg", "s3://bucket/ünï cödé/ 𝔁.jpg",
    "s3://bucket/~/x.jpg", "s3://bucket/a/-rf.jpg", "http://[::1]:8000/x.jpg",
]


@pytest.mark.parametrize("url", ODD_BUT_SAFE)
def test_odd_keys_are_mirrored_strictly_inside_out_dir(url, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    paths = OutputPaths.for_input(storage.location(url), Path("out"))
    for path in (paths.record, paths.overlay(1, "x", True), paths.heatmap(1, "x", False)):
        resolved = (tmp_path / path).resolve()  # what the kernel would open
        assert resolved.is_relative_to(out) and resolved.parent != out.parent
    remote = OutputPaths.for_input(storage.location(url), storage.location("s3://cams/run/"))
    assert str(remote.record).startswith("s3://cams/run/")
    assert ".." not in str(remote.record).removeprefix("s3://cams/run/").split("/")


def test_local_inputs_always_map_inside_out_dir(tmp_path, monkeypatch):
    """Local paths are normalised before they are mirrored: ``..`` and ``.`` are resolved
    lexically, from the current folder or the root, so nothing can climb out of out/."""
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    out = tmp_path / "work" / "out"
    for name in ("../../../../etc/x.jpg", "/x.jpg", "a/../../b/./x.jpg", "//double/x.jpg",
                 "a\\..\\..\\x.jpg"):
        record = OutputPaths.for_input(Path(name), Path("out")).record
        assert (Path.cwd() / record).resolve().is_relative_to(out), name


# --------------------------------------------------------------------------- atomic writes


def test_atomic_write_creates_folders_replaces_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "deep" / "er" / "a.jpg.cam.json"
    atomic_write(target, b"first")
    assert target.read_bytes() == b"first"
    atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.jpg.cam.json"]


def test_atomic_write_failure_removes_its_temp_file_and_keeps_the_old_content(tmp_path):
    target = tmp_path / "a.jpg.cam.png"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        atomic_write(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []

    in_the_way = tmp_path / "b.jpg.cam.png"
    in_the_way.mkdir()  # the rename itself fails
    with pytest.raises(OSError):
        atomic_write(in_the_way, b"data")
    assert in_the_way.is_dir()
    assert _leftovers(tmp_path) == []


def test_atomic_write_never_overwrites_the_protected_input(tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"precious")
    with pytest.raises(OSError, match="refusing to overwrite the input"):
        atomic_write(photo, b"overlay", protect=photo)

    hard = tmp_path / "photo.jpg.cam.png"
    os.link(photo, hard)  # the output name is another name of the input file
    with pytest.raises(OSError, match="refusing to overwrite the input"):
        atomic_write(hard, b"overlay", protect=photo)

    soft = tmp_path / "photo.jpg.cam.json"
    soft.symlink_to(photo)
    with pytest.raises(OSError, match="refusing to overwrite the input"):
        atomic_write(soft, b"{}", protect=photo)

    assert photo.read_bytes() == b"precious"
    assert _leftovers(tmp_path) == []
    # an unrelated existing output is simply replaced
    other = tmp_path / "other.png.cam.json"
    other.write_bytes(b"stale")
    atomic_write(other, b"fresh", protect=photo)
    assert other.read_bytes() == b"fresh"


def test_temp_files_of_an_interrupted_write_are_not_inputs_on_the_next_run(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / ".a.png.cam.png.abcd1234.camcli-tmp").write_bytes(b"half")
    assert [p.name for p in discover([str(tmp_path / "*"), str(tmp_path / ".*")])] == ["a.png"]


# --------------------------------------------------------------------------- JSON


# --------------------------------------------------------------------------- the lock file


def test_a_lock_file_that_is_a_symlink_is_refused_never_followed(tmp_path):
    record = tmp_path / "a.jpg.cam.json"
    target = tmp_path / "elsewhere" / "created-by-camcli"
    (tmp_path / "elsewhere").mkdir()
    lock = tmp_path / ".a.jpg.cam.lock"
    lock.symlink_to(target)  # dangling: the old code created the target
    with pytest.raises(OSError, match="lock file .a.jpg.cam.lock is a symbolic link") as refused:
        with locked(record, first=tmp_path / "a.jpg.cam.png"):
            pass
    assert refused.value.filename == str(tmp_path / "a.jpg.cam.png")
    assert not target.exists() and lock.is_symlink()

    held = tmp_path / "held"  # a symlink to a file another process holds: no wait either
    lock.unlink()
    lock.symlink_to(held)
    holder = hold_flock(held)
    try:
        started = time.monotonic()
        with pytest.raises(OSError, match="symbolic link"), locked(record):
            pass
        assert time.monotonic() - started < 5
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_file_that_is_not_a_regular_file_is_refused(tmp_path):
    os.mkfifo(tmp_path / ".a.jpg.cam.lock")
    with pytest.raises(OSError, match="not a regular file"), locked(tmp_path / "a.jpg.cam.json"):
        pass


def test_waiting_for_a_held_lock_ends_when_the_run_is_stopped(tmp_path):
    record = tmp_path / "a.jpg.cam.json"
    holder = hold_flock(tmp_path / ".a.jpg.cam.lock")
    stop = threading.Event()
    try:
        threading.Timer(0.3, stop.set).start()
        started = time.monotonic()
        with pytest.raises(InterruptedError, match="interrupted while another run held"):
            with locked(record, stop=stop):
                pass
        assert 0.3 <= time.monotonic() - started < 5
    finally:
        holder.kill()
        holder.wait()
    with locked(record):  # the holder is gone: taken at once, and removed when done
        assert (tmp_path / ".a.jpg.cam.lock").is_file()
    assert not (tmp_path / ".a.jpg.cam.lock").exists()


def test_a_stale_lock_is_removed_and_a_live_one_kept(tmp_path):
    record = tmp_path / "a.jpg.cam.json"
    lock = tmp_path / ".a.jpg.cam.lock"
    lock.write_bytes(b"")  # what a SIGKILLed run leaves
    remove_stale_lock(record)
    assert not lock.exists()
    holder = hold_flock(lock)
    try:
        remove_stale_lock(record)
        assert lock.exists()  # a live run's lock
    finally:
        holder.kill()
        holder.wait()
    lock.unlink()
    lock.symlink_to(tmp_path / "target")
    (tmp_path / "target").write_bytes(b"keep")
    remove_stale_lock(record)
    assert lock.is_symlink() and (tmp_path / "target").read_bytes() == b"keep"


def test_json_bytes_have_sorted_keys_at_every_level():
    record = {"zeta": 1, "alpha": {"y": [{"b": 1, "a": 2}], "x": None}, "mid": "é"}
    data = to_json_bytes(record)
    assert isinstance(data, bytes) and data.endswith(b"\n")
    assert json.loads(data) == record
    text = data.decode()
    assert text.index('"alpha"') < text.index('"mid"') < text.index('"zeta"')
    assert text.index('"x"') < text.index('"y"')
    assert text.index('"a"') < text.index('"b"')
    assert data == to_json_bytes(dict(reversed(list(record.items()))))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_json_refuses_nan_and_infinity(bad):
    with pytest.raises(ValueError):
        to_json_bytes({"peak": {"x": bad}})


def test_sha256_and_settings_fingerprint():
    assert sha256(b"abc") == hashlib.sha256(b"abc").hexdigest()
    settings = {"model": {"name": "resnet50"}, "alpha": 0.4, "colormap": "jet"}
    same = {"colormap": "jet", "alpha": 0.4, "model": {"name": "resnet50"}}
    assert settings_fingerprint(settings) == settings_fingerprint(same)
    assert settings_fingerprint(settings) != settings_fingerprint({**settings, "alpha": 0.5})


# --------------------------------------------------------------------------- output options


def test_output_options_are_checked_before_any_work():
    with pytest.raises(UnknownNameError, match="colormap 'plasma'"):
        OutputOptions(colormap="plasma")
    with pytest.raises(UsageError, match="overlay format 'gif'"):
        OutputOptions(overlay_format="gif")
    for alpha in (-0.1, 1.5):
        with pytest.raises(UsageError, match="--alpha"):
            OutputOptions(alpha=alpha)
    assert OutputOptions(alpha=0.0, colormap="gray", overlay_format="webp").alpha == 0.0


# --------------------------------------------------------------------------- the JSON Schema


def _done_record() -> dict:
    """A record as build_record makes it (the parts of a real one)."""
    from camcli.pipeline import build_record, describe_input

    run = {"camcli_version": "0.1.0", "versions": {"tensorflow": "2.21.0", "keras": "3.15.1"},
           "model": {"name": "m", "weights": "none", "layer": "conv", "input_size": [128, 128],
                     "preprocess": "mobilenet", "output_index": 0,
                     "output_activation": "softmax", "precision": "float32"},
           "method": "gradcam", "method_options": {"eigen_smooth": False, "aug_smooth": False},
           "score": "logit", "probability": "softmax"}
    entry = {"index": 1, "wnid": "n01443537", "label": "goldfish", "logit": 2.5,
             "probability": 0.4, "empty": False, "overlay": "a.png.cam.png",
             "overlay_sha256": "0" * 64, "overlay_bytes": 9, "overlay_width": 40,
             "overlay_height": 30, "heatmap": None, "heatmap_sha256": None, "heatmap_bytes": None,
             "peak": {"x": 3.0, "y": 4.0}, "centroid": None, "top20_energy_share": 0.3}
    prediction = {"rank": 1, "index": 1, "wnid": "n01443537", "label": "goldfish",
                  "probability": 0.4}
    return build_record(run, "0123456789abcdef", describe_input("a.png", (40, 30), b"x"),
                        [prediction], [entry])


def test_every_kind_of_line_is_one_of_the_schema_and_old_shapes_are_not():
    from cli_helpers import schema_errors
    from jsonschema import Draft202012Validator

    from camcli.outputs import SCHEMA_VERSION, json_schema
    from camcli.pipeline import build_line

    schema = json_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["properties"]["schema_version"]["const"] == SCHEMA_VERSION
    assert schema["$defs"]["record"]["properties"]["schema_version"]["const"] == SCHEMA_VERSION
    record = _done_record()
    assert schema_errors(record, "record_file") == []
    lines = {
        "done": build_line("a.png", record, ["a.png.cam.png", "a.png.cam.json"]),
        "skipped": build_line("a.png", skipped=True),
        "failed": build_line("a.png", error="no such file"),
    }
    for kind, line in lines.items():
        assert schema_errors(line) == [], kind
        assert set(line) >= {"schema_version", "ok", "skipped", "error", "input", "files"}
        assert isinstance(line["input"], dict) and line["input"]["path"] == "a.png", kind
    # what the schema refuses: version 1's lines, a record key on a failed line, a stray key,
    # a done line without a record's key, a record file with a line's key
    refused = [
        {"ok": False, "input": "a.png", "error": "no such file"},
        {"ok": True, "skipped": True, "input": "a.png"},
        {**lines["failed"], "predictions": []},
        {**lines["done"], "extra": 1},
        {k: v for k, v in lines["done"].items() if k != "explanations"},
        {**lines["done"], "error": "x"},
        {**lines["skipped"], "files": ["a.png.cam.json"]},
    ]
    for line in refused:
        assert schema_errors(line), line
    assert schema_errors({**record, "ok": True}, "record_file")


# --------------------------------------------------------------------------- --skip-existing


def test_outputs_count_as_done_only_while_they_hold_the_bytes_the_record_hashed(tmp_path):
    from camcli.outputs import is_up_to_date

    image = tmp_path / "a.jpg"
    image.write_bytes(b"the input")
    paths = OutputPaths.for_input(image)
    overlay, heatmap = paths.overlay(1, "x", False), paths.heatmap(1, "x", False)
    overlay.write_bytes(b"overlay bytes")
    heatmap.write_bytes(b"map bytes")
    entry = {"overlay": overlay.name, "overlay_sha256": sha256(b"overlay bytes"),
             "overlay_bytes": 13, "heatmap": heatmap.name, "heatmap_sha256": sha256(b"map bytes"),
             "heatmap_bytes": 9}
    record = {"settings_fingerprint": "f", "explanations": [entry]}

    def done(**changes) -> bool:
        paths.record.write_bytes(to_json_bytes({**record, "explanations": [{**entry, **changes}]}))
        os.utime(image, (1, 1))  # older than the record
        return is_up_to_date(paths, image, "f")

    assert done()
    overlay.write_bytes(b"overlay byt")  # truncated
    assert not done()
    overlay.write_bytes(b"overlay bytez")  # same size, changed
    assert not done()
    overlay.write_bytes(b"overlay bytes")
    heatmap.unlink()
    assert not done()
    heatmap.write_bytes(b"map bytes")
    assert done()
    assert not done(overlay="../a.jpg.cam.png")  # a record names files beside it only
    assert not done(overlay_sha256=None)
    assert not done(overlay_bytes=12)  # the size disagrees: not done, and nothing is read
    from camcli import outputs

    real_read, read = outputs._read, []

    def reading(location, *limit):
        read.append(Path(location))
        return real_read(location, *limit)

    with mock.patch("camcli.outputs._read", side_effect=reading):
        assert done() and overlay in read  # its bytes are hashed when the size agrees
        read.clear()
        overlay.write_bytes(b"overlay byt")
        assert not done() and overlay not in read  # truncated: found by its size alone
    overlay.write_bytes(b"overlay bytes")
    os.mkfifo(tmp_path / "fifo.png")
    assert not done(overlay="fifo.png")  # refused at once, never waited on
