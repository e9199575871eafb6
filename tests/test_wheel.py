"""A wheel built from the repository carries the bundled weights and works offline elsewhere.

The wheel is built from a copy of the project's source (so nothing is written into the checkout),
installed into a new virtualenv in an empty folder, and run there with a dead proxy and an empty
Keras cache. To avoid installing TensorFlow again, the new venv sees this venv's site-packages
through a ``.pth`` line, after its own: ``camcli`` itself comes from the wheel (checked).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import jsonschema
import pytest
from cli_helpers import nonblank_lines, offline_env

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = "camcli/data/mobilenet_v1_0.25_224_imagenet.weights.h5"
WEIGHTS_SHA256 = "6062f8635e2a9f8e814b7289f8089be56d37001b924414f73885fa981c9e178f"
MB = 1024 * 1024


def _run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    run = subprocess.run(args, capture_output=True, text=True, timeout=300, **kwargs)
    assert run.returncode == 0, f"{args}\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}"
    return run


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source)
    shutil.copytree(REPO / "camcli", source / "camcli",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--quiet", "-w", str(dist), str(source))
    (built,) = dist.glob("camcli-*.whl")
    return built


def test_the_wheel_holds_the_weights_and_little_else(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        data = archive.read(WEIGHTS)
    assert hashlib.sha256(data).hexdigest() == WEIGHTS_SHA256
    assert "camcli/data/NOTICE.md" in names
    assert "camcli/data/record.schema.json" in names  # the --json lines' and records' schema
    # What the wheel held before (code, tables, NOTICE: ~120 kB) plus the weights file.
    size = wheel.stat().st_size
    print(f"\nwheel {size:,} bytes, weights file {len(data):,} bytes")
    assert size < len(data) + 1 * MB


def test_the_installed_wheel_explains_a_photo_offline(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", str(venv))
    python = venv / "bin" / "python"
    purelib = _run(str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))")
    # This venv's packages (TensorFlow, pip...) after the new venv's own.
    (Path(purelib.stdout.strip()) / "project_venv.pth").write_text(
        sysconfig.get_path("purelib") + "\n"
    )
    _run(str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
         "--quiet", str(wheel))

    work = tmp_path / "empty"
    work.mkdir()
    shutil.copy(REPO / "sample_images" / "coffee.png", work)
    env = offline_env(tmp_path)
    where = _run(str(python), "-c", "import camcli; print(camcli.__file__)", cwd=work, env=env)
    assert Path(where.stdout.strip()).is_relative_to(venv)  # the wheel's camcli, not the repo's
    run = _run(str(venv / "bin" / "camcli"), "explain", "coffee.png", "--model",
               "mobilenet_v1_0.25_224", "--json", cwd=work, env=env)
    (record,) = [json.loads(line) for line in nonblank_lines(run.stdout)]
    assert record["ok"] is True
    # the installed package's own schema (package data) describes its --json line
    shipped = _run(str(python), "-c", "import json; from camcli.outputs import json_schema; "
                   "print(json.dumps(json_schema()))", cwd=work, env=env)
    jsonschema.validate(record, json.loads(shipped.stdout))
    assert record["model"]["weights"] == "imagenet"
    assert record["predictions"][0]["label"] == "espresso"
    assert sorted(p.name for p in work.iterdir()) == [
        "coffee.png", "coffee.png.cam.json", "coffee.png.cam.png"
    ]
    cache = Path(env["KERAS_HOME"]) / "models"
    assert not cache.exists() or not any(cache.iterdir())
