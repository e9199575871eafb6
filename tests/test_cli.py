"""The ``camcli`` command, run as a user runs it: the installed entry point in a subprocess.

Every model here has random weights (``--weights none``) except where the offline message is
checked; no test can download anything: a dead proxy is set for every run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from cli_helpers import CAMCLI, failed_line, json_lines, record_of, schema_errors
from cli_helpers import offline_env as _env
from PIL import Image

from camcli.outputs import SCHEMA_VERSION

MODEL = "mobilenet_v1_0.25_128"  # the smallest registry model: 128x128 input, 4x4 target map


def _camcli(*args: str, cwd: Path, stdin: str | None = None, **env: str):
    assert CAMCLI.exists(), f"the camcli entry point is not installed at {CAMCLI}"
    return subprocess.run(
        [str(CAMCLI), *args],
        cwd=cwd,
        env=_env(cwd, **env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _start(*args: str, cwd: Path, stdin: str | None = None, **env: str):
    """``camcli *args`` started in ``cwd``; ``.result()`` waits and gives a CompletedProcess."""
    assert CAMCLI.exists(), f"the camcli entry point is not installed at {CAMCLI}"
    process = subprocess.Popen(
        [str(CAMCLI), *args], cwd=cwd, env=_env(cwd, **env), text=True,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )

    def result() -> subprocess.CompletedProcess:
        try:
            out, err = process.communicate(stdin, timeout=300)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        return subprocess.CompletedProcess([str(CAMCLI), *args], process.returncode, out, err)

    return SimpleNamespace(process=process, result=result)


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


# --------------------------------------------------------------------------- no model needed


def test_help_version_and_models(tmp_path):
    helped = _camcli("--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    for command in ("explain", "models", "layers"):
        assert command in helped.stdout

    version = _camcli("--version", cwd=tmp_path)
    assert version.returncode == 0
    assert version.stdout.strip().startswith("camcli ")

    listed = _camcli("models", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    specs = {spec["name"]: spec for spec in json.loads(listed.stdout)}
    assert specs["resnet50"]["input_size"] == [224, 224]
    assert specs["mobilenet_v1_0.25_224"]["input_size"] == [224, 224]
    assert specs["mobilenet_v1_0.25_224"]["default_layer"] == "conv_pw_13_relu"
    assert specs[MODEL]["input_size"] == [128, 128]

    filtered = _camcli("models", "resnet*", "--json", cwd=tmp_path)
    names = [spec["name"] for spec in json.loads(filtered.stdout)]
    assert "resnet50" in names and "resnet152v2" in names
    assert all(name.startswith("resnet") for name in names)

    # The table, piped as in `camcli models | grep ...`: every name in full, one row each.
    table = _camcli("models", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert f"{len(specs)} models" in table.stdout
    assert "…" not in table.stdout
    for name in ("resnet50", "mobilenet_v1_0.25_224", "mobilenet_v3_large_minimalistic_1.0_224"):
        assert any(f" {name} " in line for line in table.stdout.splitlines()), name


def test_cli_and_models_do_not_import_tensorflow(tmp_path):
    script = (
        "import sys\n"
        "from camcli.cli import app\n"
        "loaded = sorted(m for m in ('tensorflow', 'keras') if m in sys.modules)\n"
        "assert not loaded, f'import camcli.cli loaded {loaded}'\n"
        "try:\n"
        "    app(['models', '--json'])\n"
        "except SystemExit as exit:\n"
        "    assert exit.code in (0, None), exit.code\n"
        "loaded = sorted(m for m in ('tensorflow', 'keras') if m in sys.modules)\n"
        "assert not loaded, f'camcli models loaded {loaded}'\n"
        "print('ok')\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.rstrip().endswith("ok")
    assert '"resnet50"' in run.stdout


# --------------------------------------------------------------------------- usage errors


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    """This module's independent ``camcli`` runs, started together (each start-up imports
    TensorFlow: seconds of one core); each test waits for its own (``.result()``) and checks it.
    Each run has a folder of its own (``.cwd``), made as its test describes."""
    runs = {}

    def start(name, *args, stdin=None, **env):
        runs[name] = _start(*args, cwd=folders[name], stdin=stdin, **env)
        runs[name].cwd = folders[name]

    folders = {name: tmp_path_factory.mktemp(name)
               for name in ("unknown", "layers", "offline", "explain", "stdin")}
    (folders["unknown"] / "x.png").write_bytes(b"")
    start("unknown", "explain", "x.png", "--model", "resnet5", "--weights", "none")
    start("layers", "layers", MODEL)
    keras_home = folders["offline"] / "empty_keras_home"
    keras_home.mkdir()
    Image.new("RGB", (20, 20), (90, 30, 60)).save(folders["offline"] / "p.png")
    start("offline", "explain", "p.png", "--model", MODEL, "--weights", "imagenet", "--json",
          KERAS_HOME=str(keras_home))
    _write_inputs(folders["explain"] / "imgs")
    start("explain", "explain", "imgs", "missing.png", "--model", MODEL, "--weights", "none",
          "--json")
    _write_stdin_inputs(folders["stdin"] / "in")
    start("stdin", "explain", "-", "--top-k-cams", "2", "--out-dir", "out", "--batch-size", "1",
          "--model", MODEL, "--weights", "none", "--json", stdin="in/x.png\n\nin/y.jpg\n")
    yield runs
    for run in runs.values():  # a test that failed early leaves its run behind: stop it
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()


def test_unknown_model_exits_2_with_suggestions_and_no_traceback(started):
    tmp_path = started["unknown"].cwd
    run = started["unknown"].result()
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    errors = [line for line in _lines(run.stderr) if "warning" not in line]
    assert len(errors) == 1, run.stderr
    assert errors[0].startswith("camcli: error: unknown model 'resnet5' — did you mean: resnet50")
    assert "resnet101" in errors[0]
    assert run.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keras_home", "x.png"]


def test_unknown_model_message_is_the_documented_one():
    from camcli import registry
    from camcli.errors import UnknownNameError

    with pytest.raises(UnknownNameError) as info:
        registry.get_spec("resnet5")
    assert str(info.value) == "unknown model 'resnet5' — did you mean: resnet50, resnet101?"


def test_layers_marks_the_default_layer(started):
    run = started["layers"].result()
    assert run.returncode == 0, run.stderr
    rows = [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in run.stdout.splitlines()
        if line.startswith("│")
    ]
    by_layer = {row[1]: row for row in rows if len(row) == 3}
    assert "conv1" in by_layer and "conv_preds" in by_layer
    assert [row[1] for row in rows if row[0] == "*"] == ["conv_pw_13_relu"]
    assert by_layer["conv_pw_13_relu"][2] == "(4, 4, 256)"


def test_offline_imagenet_weights_give_one_clear_message(started):
    tmp_path = started["offline"].cwd
    keras_home = tmp_path / "empty_keras_home"
    run = started["offline"].result()
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert run.stdout == ""  # stdout carries JSON lines only, never download chatter
    # nor does stderr: camcli's error line alone, no "Downloading data from …" before it
    errors = _lines(run.stderr)
    assert len(errors) == 1 and errors[0].startswith("camcli: error:"), run.stderr
    message = errors[0]
    assert MODEL in message
    assert str(keras_home / "models") in message
    assert "--weights PATH" in message and "--weights none" in message
    # and the way out that needs no download: the bundled model, named from the registry
    assert message.endswith(
        "; or, with no download, --model mobilenet_v1_0.25_224"
        " (ImageNet weights bundled with camcli)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty_keras_home", "p.png"]


# --------------------------------------------------------------------------- explain a folder


def _write_inputs(folder: Path) -> dict[str, tuple[int, int]]:
    """Small images of several kinds; returns name -> upright (width, height)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / "a.jpg")
    Image.new("RGB", (50, 70), (30, 140, 200)).save(folder / "a.png")  # same stem as a.jpg
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 40x24, shown 24x40
    Image.new("RGB", (40, 24), (200, 60, 20)).save(folder / "rot.jpg", exif=exif)
    rgba = np.zeros((30, 30, 4), np.uint8)
    rgba[5:20, 5:20] = (255, 255, 0, 255)
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    (folder / "bad.jpg").write_text("not a jpeg at all\n")
    (folder / "notes.txt").write_text("ignored: not an image extension\n")
    (folder / "sub").mkdir()
    Image.new("RGB", (9, 9)).save(folder / "sub" / "deep.png")  # not reached without -r
    return dict(_SIZES)


_SIZES = {"a.jpg": (64, 48), "a.png": (50, 70), "rot.jpg": (24, 40), "rgba.png": (30, 30)}


@pytest.fixture(scope="module")
def folder_run(started):
    root = started["explain"].cwd
    sizes = _SIZES
    run = started["explain"].result()
    records = {
        name: (root / "imgs" / f"{name}.cam.json").read_bytes()
        for name in sizes
        if (root / "imgs" / f"{name}.cam.json").exists()
    }
    return SimpleNamespace(root=root, imgs=root / "imgs", sizes=sizes, run=run, records=records)


def test_explain_writes_an_overlay_and_a_record_beside_each_image(folder_run):
    assert folder_run.run.returncode == 1, folder_run.run.stderr  # two inputs failed
    expected = {"bad.jpg", "notes.txt", "sub", *folder_run.sizes}
    for name in folder_run.sizes:
        expected |= {f"{name}.cam.png", f"{name}.cam.json"}
    assert {p.name for p in folder_run.imgs.iterdir()} == expected
    assert [p.name for p in (folder_run.imgs / "sub").iterdir()] == ["deep.png"]
    for name, size in folder_run.sizes.items():
        assert _png_size(folder_run.imgs / f"{name}.cam.png") == size, name


def test_records_hold_predictions_explanations_and_the_input_hash(folder_run):
    assert set(folder_run.records) == set(folder_run.sizes)
    for name, data in folder_run.records.items():
        record = json.loads(data)
        assert data.decode() == json.dumps(record, sort_keys=True, indent=2) + "\n"
        assert record["schema_version"] == SCHEMA_VERSION == 2
        assert schema_errors(record, "record_file") == []
        width, height = folder_run.sizes[name]
        source = (folder_run.imgs / name).read_bytes()
        assert record["input"] == {
            "path": f"imgs/{name}",
            "width": width,
            "height": height,
            "sha256": hashlib.sha256(source).hexdigest(),
        }
        assert record["model"]["name"] == MODEL and record["model"]["weights"] == "none"
        assert record["model"]["layer"] == "conv_pw_13_relu"

        predictions = record["predictions"]
        assert [p["rank"] for p in predictions] == [1, 2, 3, 4, 5]
        probabilities = [p["probability"] for p in predictions]
        assert all(0.0 <= p <= 1.0 for p in probabilities)
        assert probabilities == sorted(probabilities, reverse=True)
        assert sum(probabilities) <= 1.0 + 1e-9
        assert len({p["index"] for p in predictions}) == 5

        (explained,) = record["explanations"]
        # top-1 by default: the class explained is the first prediction
        assert explained["index"] == predictions[0]["index"], name
        assert explained["label"] == predictions[0]["label"]
        assert explained["overlay"] == f"{name}.cam.png"
        assert explained["heatmap"] is None
        assert 0 <= explained["peak"]["x"] < width and 0 <= explained["peak"]["y"] < height


def test_json_lines_on_stdout_one_per_input(folder_run):
    lines = json_lines(folder_run.run.stdout)  # each checked against the JSON Schema
    by_input = {}
    for line in lines:
        key = line["input"]["path"]  # an object on every line, failed or done
        by_input[key] = line
    assert len(lines) == len(by_input) == 6
    assert set(by_input) == {f"imgs/{n}" for n in folder_run.sizes} | {
        "imgs/bad.jpg",
        "missing.png",
    }
    for path, error in (("imgs/bad.jpg", "not an image file Pillow can read"),
                        ("missing.png", "no such file")):
        assert by_input[path] == failed_line(path, error)
    for name in folder_run.sizes:
        line = by_input[f"imgs/{name}"]
        assert line["files"] == [f"imgs/{name}.cam.png", f"imgs/{name}.cam.json"]
        record = json.loads(folder_run.records[name])
        assert record_of(line) == record and line["error"] is None and not line["skipped"]


def test_failures_are_one_line_each_on_stderr_and_the_rest_is_done(folder_run):
    stderr = folder_run.run.stderr
    assert "Traceback" not in stderr
    lines = _lines(stderr)
    assert "camcli: warning: --weights none: random weights, the maps mean nothing" in lines
    assert "imgs/bad.jpg: not an image file Pillow can read" in lines
    assert "missing.png: no such file" in lines
    assert lines[-1].startswith("camcli: 4 done, 2 failed in ")
    assert len(lines) == 4, stderr  # nothing else: no TensorFlow start-up chatter


def test_rerun_with_two_classes_and_heatmaps_ignores_earlier_outputs(folder_run, tmp_path):
    imgs = tmp_path / "imgs"
    shutil.copytree(folder_run.imgs, imgs, symlinks=True)  # the folder as the first run left it
    (imgs / "bad.jpg").unlink()
    run = _camcli(
        "explain",
        "imgs",
        "--model",
        MODEL,
        "--weights",
        "none",
        "--class",
        "1",
        "--class",
        "2",
        "--save-heatmap",
        "--json",
        "-q",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert _lines(run.stderr) == [
        "camcli: warning: --weights none: random weights, the maps mean nothing"
    ]
    lines = json_lines(run.stdout)
    assert sorted(line["input"]["path"] for line in lines) == sorted(
        f"imgs/{name}" for name in folder_run.sizes
    )
    for line in lines:
        name = Path(line["input"]["path"]).name
        labelled = [f"{name}.cam.1_goldfish", f"{name}.cam.2_great_white_shark"]
        assert [e["index"] for e in line["explanations"]] == [1, 2]
        assert [e["overlay"] for e in line["explanations"]] == [f"{s}.png" for s in labelled]
        assert [e["heatmap"] for e in line["explanations"]] == [f"{s}.npy" for s in labelled]
        for stem in labelled:
            assert _png_size(imgs / f"{stem}.png") == folder_run.sizes[name]
            cam = np.load(imgs / f"{stem}.npy")
            assert cam.dtype == np.float32 and cam.shape == (4, 4)
            assert cam.min() >= 0.0 and cam.max() <= 1.0
    # no output of the first run was explained as an input
    assert not [p.name for p in imgs.iterdir() if p.name.count(".cam") > 1]


def _write_stdin_inputs(source: Path) -> dict[str, tuple[int, int]]:
    source.mkdir()
    Image.new("RGB", (33, 21), (10, 200, 90)).save(source / "x.png")
    noise = np.random.default_rng(3).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(noise).save(source / "y.jpg")
    return {"x.png": (33, 21), "y.jpg": (40, 40)}


def test_top_k_cams_out_dir_and_stdin(started):
    # camcli explain - --top-k-cams 2 --out-dir out --batch-size 1 ..., paths on stdin
    tmp_path = started["stdin"].cwd
    source = tmp_path / "in"
    sizes = {"x.png": (33, 21), "y.jpg": (40, 40)}
    run = started["stdin"].result()
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in source.iterdir()) == ["x.png", "y.jpg"]  # nothing beside
    lines = {line["input"]["path"]: line for line in json_lines(run.stdout)}
    assert set(lines) == {"in/x.png", "in/y.jpg"}
    mirror = tmp_path / "out" / "in"
    for name, size in sizes.items():
        record = json.loads((mirror / f"{name}.cam.json").read_text())
        assert record == record_of(lines[f"in/{name}"])
        explained = record["explanations"]
        assert [e["index"] for e in explained] == [p["index"] for p in record["predictions"][:2]]
        overlays = []
        for entry in explained:
            expected = f"{name}.cam.{entry['index']}_"
            assert entry["overlay"].startswith(expected) and entry["overlay"].endswith(".png")
            assert _png_size(mirror / entry["overlay"]) == size
            overlays.append(entry["overlay"])
        assert sorted(p.name for p in mirror.iterdir() if p.name.startswith(name)) == sorted(
            [*overlays, f"{name}.cam.json"]
        )
