"""`make demo`, the README's first command, as on a fresh clone with no network and no ../shared.

What the demo needs from a clone (the Makefile, sample_images/, tools/demo_summary.py) is copied
into an empty folder, which has no ../shared beside it, and `make demo` runs there with this
test's venv (``-o install``: the venv is not rebuilt), a dead proxy and an empty Keras cache.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from cli_helpers import nonblank_lines, offline_env

REPO = Path(__file__).resolve().parents[1]
CHECKOUT = sorted(p.name for p in (REPO / "sample_images").iterdir())  # photos + README.md
PHOTOS = [name for name in CHECKOUT if name != "README.md"]
CATS = {281, 282, 283, 284, 285}  # tabby, tiger_cat, Persian_cat, Siamese_cat, Egyptian_cat
ROW = re.compile(r"^  (sample_images/\S+) +(\S+) \((\d+)%, class (\d+)\)$")


def test_make_demo_runs_offline_and_ends_with_each_photos_top1(tmp_path):
    clone = tmp_path / "clone"
    (clone / "tools").mkdir(parents=True)
    shutil.copy(REPO / "Makefile", clone)
    shutil.copy(REPO / "tools" / "demo_summary.py", clone / "tools")
    shutil.copytree(REPO / "sample_images", clone / "sample_images")
    env = offline_env(tmp_path)
    run = subprocess.run(
        ["make", "--no-print-directory", "-o", "install", "demo", f"VENV={sys.prefix}"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "--model mobilenet_v1_0.25_224" in run.stdout  # the bundled model, as make echoes it
    assert re.fullmatch(r"camcli: 4 done, 0 failed in .*", nonblank_lines(run.stderr)[-1])

    # The outputs are in demo-out/, none beside the photos of the checkout.
    assert sorted(p.name for p in (clone / "sample_images").iterdir()) == CHECKOUT
    outputs = clone / "demo-out" / "sample_images"
    expected = sorted(f"{name}.cam.{ext}" for name in PHOTOS for ext in ("json", "png"))
    assert sorted(p.name for p in outputs.iterdir()) == expected

    # It ends by saying each photo's top-1, as its record has it, then where the outputs are.
    lines = nonblank_lines(run.stdout)
    assert lines[-1] == (
        "overlays (*.cam.png) and JSON records (*.cam.json) are in: demo-out/sample_images"
    )
    rows = {m[1]: m for m in map(ROW.match, lines) if m}
    assert sorted(rows) == [f"sample_images/{name}" for name in PHOTOS]
    for path, row in rows.items():
        record = json.loads((clone / "demo-out" / f"{path}.cam.json").read_text())
        best = record["predictions"][0]
        assert (row[2], int(row[4])) == (best["label"], best["index"])
        assert record["model"] == record["model"] | {"name": "mobilenet_v1_0.25_224",
                                                     "weights": "imagenet"}
    assert int(rows["sample_images/chelsea.png"][4]) in CATS
    assert rows["sample_images/coffee.png"][2] == "espresso"

    cache = Path(env["KERAS_HOME"]) / "models"
    assert not cache.exists() or not any(cache.iterdir())  # nothing downloaded or cached


def test_demo_summary_without_records_says_so(tmp_path):
    run = subprocess.run(
        [sys.executable, str(REPO / "tools" / "demo_summary.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1
    assert run.stdout == ""
    assert nonblank_lines(run.stderr) == [f"demo_summary: no camcli records under {tmp_path}/"]
