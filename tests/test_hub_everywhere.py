"""Everything else works unchanged with keras-hub models (issue 22): audit, report, shards,
object storage, the Ray engine and ``--precision bfloat16``.

One tiny keras-hub ViT preset folder (``tiny_hub_vit`` in conftest: random weights, a bicubic
image converter, a token grid) explains one folder of small images locally, once per module:
the reference. Every other run is compared with it — its records carry ``model.target_grid``
and ``model.image_converter`` and fit the JSON Schema.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import CAMCLI, check_output_sets, json_lines, nonblank_lines, offline_env
from PIL import Image

pytest.importorskip("keras_hub")

ROOT = Path(__file__).resolve().parents[1]
LITE0 = ROOT.parent / "shared" / "fixtures" / "efficientnet_lite0_imagenet"
SAMPLES = ROOT / "sample_images"
N_IMAGES = 6


def _camcli(cwd: Path, *args, env: dict | None = None, timeout: int = 600):
    env = env or offline_env(cwd)
    return subprocess.run([str(CAMCLI), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _outputs(folder: Path) -> dict[str, object]:
    """Every file under ``folder`` by relative path (records parsed)."""
    return {str(p.relative_to(folder)): json.loads(p.read_bytes()) if p.suffix == ".json"
            else p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _same(outputs: dict, reference: dict) -> None:
    """The same files with the same content, up to the last float bits: a transformer's logits
    are not bit-reproducible on oneDNN (1e-7 apart from run to run and batch to batch, where
    CNNs are), so numbers match to 1e-5, maps to 1e-4 and overlays to 2 levels of 255."""
    assert sorted(outputs) == sorted(reference)
    for name, want in reference.items():
        got = outputs[name]
        if name.endswith(".json"):
            assert _numbers(got) == pytest.approx(_numbers(want), abs=1e-5), name
        elif name.endswith(".npy"):
            np.testing.assert_allclose(_array(got), _array(want), atol=1e-4, err_msg=name)
        else:
            diff = np.abs(_array(got).astype(int) - _array(want).astype(int))
            assert diff.max() <= 2, name


def _numbers(record, path=""):
    """A record flattened to {path: value}, without the hashes and sizes of the files."""
    if isinstance(record, dict):
        return {k: v for key, value in record.items() if not key.endswith(("sha256", "bytes"))
                for k, v in _numbers(value, f"{path}/{key}").items()}
    if isinstance(record, list):
        return {k: v for i, value in enumerate(record)
                for k, v in _numbers(value, f"{path}/{i}").items()}
    return {path: record}


def _array(data: bytes) -> np.ndarray:
    import io

    return np.load(io.BytesIO(data)) if data.startswith(b"\x93NUMPY") else \
        np.asarray(Image.open(io.BytesIO(data)))


@pytest.fixture(scope="module")
def local(tmp_path_factory, tiny_hub_vit):
    """Folder ``in/`` of small images and one local run of it into ``local/``."""
    root = tmp_path_factory.mktemp("hub-everywhere")
    (root / "in" / "sub").mkdir(parents=True)
    rng = np.random.default_rng(5)
    for i in range(N_IMAGES):
        height, width = int(rng.integers(40, 90)), int(rng.integers(40, 90))
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        where = root / "in" / ("sub" if i % 3 == 0 else "") / f"p{i}{'.jpg' if i % 2 else '.png'}"
        Image.fromarray(pixels).save(where)
    model = ("--model", f"{tiny_hub_vit}/", "--save-heatmap", "--batch-size", "4", "-r")
    done = _camcli(root, "explain", "in", *model, "--out-dir", "local", "--json")
    assert done.returncode == 0, done.stderr
    lines = json_lines(done.stdout)  # each --json line fits the schema
    records = check_output_sets(root / "local")  # each record file too, and its files exist
    assert len(lines) == len(records) == N_IMAGES
    for record in records.values():
        assert record["model"]["preprocess"] == "image_converter"
        assert record["model"]["image_converter"]["interpolation"] == "bicubic"
        assert record["model"]["target_grid"] == [
            {"kind": "tokens", "grid": [4, 4], "tokens": 17, "prefix_tokens": 1}]
    return root, model, _outputs(root / "local")


def test_shards_of_a_hub_run_cover_the_inputs_once_with_the_same_outputs(local):
    root, model, reference = local
    parts = []
    for k in (1, 2):
        done = _camcli(root, "explain", "in", *model, "--shard", f"{k}/2", "--out-dir", "shards")
        assert done.returncode == 0, done.stderr
        parts.append(re.search(r"(\d+) done", done.stderr).group(1))
    assert all(int(n) > 0 for n in parts) and sum(map(int, parts)) == N_IMAGES
    _same(_outputs(root / "shards"), reference)


def test_report_over_a_hub_run(local):
    root, _, reference = local
    done = _camcli(root, "report", "local", "-o", "report")
    assert done.returncode == 0, done.stderr
    (line,) = nonblank_lines(done.stderr)
    assert line.startswith(f"camcli: report of {N_IMAGES} inputs (0 failed"), line
    html = (root / "report" / "index.html").read_text(encoding="utf-8")
    data = json.loads(re.search(r'id="camcli-data">(.*?)</script>', html, re.S).group(1))
    assert data["counts"]["done"] == N_IMAGES
    thumbs = [p.name for p in (root / "report" / "thumbs").iterdir()]
    assert len(thumbs) == 2 * N_IMAGES  # the photo's and its overlay's
    assert sum(name.endswith(".cam.jpg") for name in thumbs) == N_IMAGES


def test_audit_of_a_hub_model_sees_what_explain_sees(local):
    """Same decode (the converter's bicubic resize and scale), same layer and grid: the audit's
    probabilities equal the explain records' (PNG inputs: see below), its maps on the grid."""
    root, model, reference = local
    records = {k: v for k, v in reference.items() if k.endswith(".cam.json")}
    lines = ["path,expected,bbox"]
    for record in records.values():
        top = record["predictions"][0]["label"]
        lines.append(f'{record["input"]["path"]},{top},"0,0,20,20"')
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    done = _camcli(root, "audit", "manifest.csv", *model[:2], "--min-top1", "1", "--steps", "3",
                   "--out", "audit")
    assert done.returncode == 0, done.stderr
    audit = json.loads((root / "audit" / "audit.json").read_text())
    assert audit["model"]["target_grid"][0]["grid"] == [4, 4]
    assert audit["model"]["image_converter"]["interpolation"] == "bicubic"
    by_path = {r["input"]["path"]: r for r in records.values()}
    assert sorted(i["path"] for i in audit["images"]) == sorted(by_path)
    for image in audit["images"]:
        record = by_path[image["path"]]
        assert image["metrics"]["top1"] == 1
        assert image["explained"]["probability"] == pytest.approx(
            record["predictions"][0]["probability"], abs=1e-5)
        assert np.asarray(image["map"]["values"]).shape == (4, 4)


def test_a_hub_run_reads_and_writes_object_storage(local, s3_server):
    root, model, reference = local
    client = s3_server.client()
    client.create_bucket(Bucket="hub-in")
    client.create_bucket(Bucket="hub-out")
    for path in sorted((root / "in").rglob("*.*g")):
        client.put_object(Bucket="hub-in", Key=f"set/{path.relative_to(root / 'in')}",
                          Body=path.read_bytes())
    env = offline_env(root, **s3_server.env)
    done = _camcli(root, "explain", "s3://hub-in/set/", *model, "-o", "s3://hub-out/run/",
                   env=env)
    assert done.returncode == 0, done.stderr
    for name, content in reference.items():
        key = f"run/hub-in/set/{name.removeprefix('in/')}"
        body = client.get_object(Bucket="hub-out", Key=key)["Body"].read()
        if name.endswith(".json"):
            record = json.loads(body)
            assert record["input"]["path"].startswith("s3://hub-in/set/")
            assert record["predictions"] == content["predictions"]
            assert record["model"]["target_grid"] == content["model"]["target_grid"]
        else:
            assert body == content, name


def test_a_hub_run_on_ray_writes_what_the_local_run_writes(local, ray_cluster):
    """The workers load the preset folder themselves (same layer, grid and converter)."""
    root, model, reference = local
    env = offline_env(root, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
                      RAY_USAGE_STATS_ENABLED="0", **ray_cluster.auth)
    done = _camcli(root, "explain", "in", *model, "--out-dir", "ray", "--engine", "ray",
                   "--ray-workers", "1", "--ray-cpus", "2", "--ray-address", ray_cluster.address,
                   env=env)
    assert done.returncode == 0, done.stderr
    _same(_outputs(root / "ray"), reference)


def test_bfloat16_runs_a_hub_vit_and_the_efficientnet_preset(local):
    """The precision is recorded and used (the ViT's probabilities move by bfloat16's error),
    and the real EfficientNet preset still sees a cat in chelsea."""
    root, model, reference = local
    done = _camcli(root, "explain", "in/p2.png", SAMPLES / "chelsea.png", "--model", f"{LITE0}/",
                   "--precision", "bfloat16", "--out-dir", "bf16-lite0", "--json")
    assert done.returncode == 0, done.stderr
    chelsea = json.loads(next((root / "bf16-lite0").rglob("chelsea.png.cam.json")).read_text())
    assert chelsea["model"]["precision"] == "bfloat16"
    assert chelsea["predictions"][0]["index"] in range(281, 286)  # a cat class
    done = _camcli(root, "explain", "in/p2.png", "in/p4.png", *model, "--precision", "bfloat16",
                   "--out-dir", "bf16-vit", "--json")
    assert done.returncode == 0, done.stderr
    for line in json_lines(done.stdout):
        assert line["model"]["precision"] == "bfloat16"
        want = reference[f"{line['input']['path']}.cam.json"]["predictions"]
        got = [p["probability"] for p in line["predictions"]]
        assert got == pytest.approx([p["probability"] for p in want], abs=0.05)
        assert got != pytest.approx([p["probability"] for p in want], abs=1e-6)
