"""The ImageNet weights that ship inside the package (``camcli/data``, see its NOTICE.md).

The installed file is checked against the size and sha256 published with it, and damaged copies
(truncated, one byte changed, missing) must be refused with one line naming the file and the
reason, in Python and through the CLI, before any model is built. The copies live in temporary
folders: the installed package is never touched. What the bundled weights predict is checked in
test_real_weights.py; `make demo` in test_demo.py; the built wheel in test_wheel.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import CAMCLI, nonblank_lines, offline_env

import camcli
from camcli import loading, registry
from camcli.errors import WeightsError

REPO = Path(__file__).resolve().parents[1]
BUNDLED_MODEL = "mobilenet_v1_0.25_224"
# Published with the file (issue 10 and the fixture's SOURCES.md), independent of the registry.
PUBLISHED_SIZE = 2_140_432
PUBLISHED_SHA256 = "6062f8635e2a9f8e814b7289f8089be56d37001b924414f73885fa981c9e178f"


def _bundled() -> registry.BundledWeights:
    return registry.get_spec(BUNDLED_MODEL).bundled


def test_only_mobilenet_v1_025_224_has_bundled_weights():
    assert [spec.name for spec in registry.bundled_models()] == [BUNDLED_MODEL]
    assert registry.get_spec("resnet50").bundled is None  # the default model still downloads
    assert registry.get_spec("mobilenet_v1_0.25_128").bundled is None  # same family, other size
    assert _bundled().file == "mobilenet_v1_0.25_224_imagenet.weights.h5"


def test_the_installed_file_is_the_published_one():
    path = loading.bundled_weights_path(_bundled())
    assert path.parent == Path(camcli.__file__).parent / "data"
    data = path.read_bytes()
    assert len(data) == PUBLISHED_SIZE
    assert hashlib.sha256(data).hexdigest() == PUBLISHED_SHA256
    assert (_bundled().size, _bundled().sha256) == (PUBLISHED_SIZE, PUBLISHED_SHA256)
    loading.verify_weights_file(path, _bundled())  # the check itself accepts it


def _damaged_copy(folder: Path, damage: str) -> Path:
    copy = folder / "damaged.weights.h5"
    data = loading.bundled_weights_path(_bundled()).read_bytes()
    if damage == "truncated":
        copy.write_bytes(data[:1_000_000])
    elif damage == "one byte changed":  # same size: only the digest can tell
        middle = len(data) // 2
        copy.write_bytes(data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :])
    assert damage != "missing" or not copy.exists()
    return copy


DAMAGES = {
    "truncated": "the bundled weights are damaged (1,000,000 bytes, expected 2,140,432)",
    "one byte changed": "the bundled weights are damaged (sha256 ",
    "missing": "cannot read the bundled weights (No such file or directory)",
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_copy_is_refused_with_one_line(tmp_path, damage):
    copy = _damaged_copy(tmp_path, damage)
    with pytest.raises(WeightsError) as info:
        loading.verify_weights_file(copy, _bundled())
    message = str(info.value)
    assert message.startswith(f"{copy}: {DAMAGES[damage]}")
    assert "reinstall camcli" in message and "\n" not in message
    if damage == "one byte changed":
        assert f"expected {PUBLISHED_SHA256[:12]}…" in message


def test_load_checks_the_file_before_building_the_model(tmp_path, monkeypatch):
    copy = _damaged_copy(tmp_path, "one byte changed")
    monkeypatch.setattr(loading, "bundled_weights_path", lambda bundled: copy)
    built = []
    monkeypatch.setattr(registry.ModelSpec, "build", lambda spec, weights=None: built.append(1))
    with pytest.raises(WeightsError, match="the bundled weights are damaged"):
        loading.load(BUNDLED_MODEL, weights="imagenet")
    assert built == []  # refused at once, not after seconds of building


def test_the_cli_refuses_a_damaged_install(tmp_path):
    """A copy of the package with a corrupted weights file, imported instead of the real one."""
    site = tmp_path / "site"
    shutil.copytree(
        Path(camcli.__file__).parent, site / "camcli", ignore=shutil.ignore_patterns("__pycache__")
    )
    weights = site / "camcli" / "data" / _bundled().file
    weights.write_bytes(weights.read_bytes()[:-4096])  # an interrupted copy
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(REPO / "sample_images" / "coffee.png", work)
    run = subprocess.run(
        [sys.executable, "-c", "from camcli.cli import main; main()", "explain", "coffee.png",
         "--model", BUNDLED_MODEL, "--json"],
        cwd=work,
        env=offline_env(tmp_path, PYTHONPATH=str(site)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert nonblank_lines(run.stderr) == [
        f"camcli: error: {weights}: the bundled weights are damaged "
        f"({PUBLISHED_SIZE - 4096:,} bytes, expected {PUBLISHED_SIZE:,}); "
        "reinstall camcli (pip install --force-reinstall camcli)"
    ]
    assert run.stdout == ""
    assert sorted(p.name for p in work.iterdir()) == ["coffee.png"]  # nothing written


def test_camcli_models_shows_which_models_work_offline(tmp_path):
    def camcli_models(*args: str) -> str:
        run = subprocess.run(
            [str(CAMCLI), "models", *args],
            cwd=tmp_path,
            env=offline_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr
        return run.stdout

    listed = {spec["name"]: spec for spec in json.loads(camcli_models("--json"))}
    assert listed[BUNDLED_MODEL]["bundled_weights"] == {
        "file": "mobilenet_v1_0.25_224_imagenet.weights.h5",
        "sha256": PUBLISHED_SHA256,
        "bytes": PUBLISHED_SIZE,
    }
    assert [name for name, spec in listed.items() if spec["bundled_weights"]] == [BUNDLED_MODEL]

    table = camcli_models("mobilenet_v1_0.25*")
    header = next(line for line in table.splitlines() if " name " in line)
    assert "imagenet weights" in header
    rows = {line.split("│")[1].strip(): line for line in table.splitlines() if "│" in line}
    assert " bundled " in rows[BUNDLED_MODEL]
    assert " download " in rows["mobilenet_v1_0.25_128"]
    assert "bundled: the weights ship with camcli, no download" in table
    assert "bundled:" not in camcli_models("resnet*")  # no bundled row, no note
