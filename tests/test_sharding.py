"""``--shard K/N`` and ``--shard auto``: every input in exactly one shard, whatever the order,
the machine or the files added later; shards compose with --out-dir, --json, --skip-existing."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import CAMCLI, nonblank_lines, offline_env, run_all
from PIL import Image

from camcli.errors import UsageError
from camcli.sharding import Shard, from_environment, parse, select

KEYS = [f"photos/day{d}/img_{i:05d}.jpg" for d in range(5) for i in range(400)] + [
    f"s3://bucket/prefix/{i}.png" for i in range(200)
]


def _by_hand(key: str, count: int) -> int:
    """The shard (1-based) of ``key``, from the documented rule: SHA-1, first 8 bytes, mod N."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:16], 16) % count + 1


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 16])
def test_every_input_lands_in_exactly_one_shard_the_documented_one(count):
    shards = [Shard(k, count) for k in range(1, count + 1)]
    for key in KEYS:
        owners = [s.index for s in shards if s.owns(key)]
        assert owners == [_by_hand(key, count)], key


def test_shards_are_balanced_and_do_not_depend_on_order_or_on_other_files():
    count = 4
    sizes = [sum(Shard(k, count).owns(key) for key in KEYS) for k in range(1, count + 1)]
    assert sum(sizes) == len(KEYS)
    assert max(sizes) < 1.15 * len(KEYS) / count, sizes
    shard = Shard(2, count)
    kept = list(select(shard, KEYS))
    shuffled = list(np.random.default_rng(0).permutation(KEYS))
    assert sorted(select(shard, shuffled)) == sorted(kept)
    more = [*shuffled, *(f"photos/new/{i}.jpg" for i in range(500))]
    assert set(kept) <= set(select(shard, more))  # new files never move old ones


def test_paths_are_sharded_by_their_normalised_form_not_by_spelling():
    shard = Shard(1, 3)
    for key in KEYS[:200]:
        assert shard.owns(key) == shard.owns(f"./{key}") == shard.owns(f"x/../{key}")


def test_select_counts_what_it_saw_and_kept():
    class Stats:
        listed = taken = 0

    stats = Stats()
    kept = list(select(Shard(3, 5), KEYS, stats))
    assert (stats.listed, stats.taken) == (len(KEYS), len(kept))


@pytest.mark.parametrize("text", ["0/4", "5/4", "1/0", "a/b", "1-4", "", "auto1"])
def test_bad_shard_specs_are_usage_errors(text):
    with pytest.raises(UsageError, match="--shard"):
        parse(text, environ={})


def test_parse_reads_k_of_n():
    assert parse(" 2 / 4 ") == Shard(2, 4)
    assert parse(None) is None
    assert str(parse("3/8")) == "3/8"


SLURM = {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "4"}


@pytest.mark.parametrize(("environ", "expected"), [
    (SLURM, Shard(3, 4)),  # --array=5-8: task 7 is the third of four
    ({**SLURM, "SLURM_ARRAY_TASK_ID": "5"}, Shard(1, 4)),
    ({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "3",
      "SLURM_ARRAY_TASK_STEP": "2"}, Shard(3, 3)),  # --array=0-4:2 is tasks 0, 2, 4
    ({"JOB_COMPLETION_INDEX": "0", "CAMCLI_SHARD_COUNT": "3"}, Shard(1, 3)),
    ({"JOB_COMPLETION_INDEX": "2", "CAMCLI_SHARD_COUNT": "3"}, Shard(3, 3)),
])
def test_auto_reads_job_arrays(environ, expected):
    assert parse("auto", environ) == expected


@pytest.mark.parametrize(("environ", "message"), [
    ({}, "no job array found .*SLURM_ARRAY_TASK_ID.*JOB_COMPLETION_INDEX.*CAMCLI_SHARD_COUNT"),
    ({**SLURM, "SLURM_ARRAY_TASK_ID": "9"}, "inconsistent Slurm .*SLURM_ARRAY_TASK_ID=9"),
    ({**SLURM, "SLURM_ARRAY_TASK_ID": "4"}, "inconsistent Slurm"),
    ({"SLURM_ARRAY_TASK_ID": "3"}, "SLURM_ARRAY_TASK_MIN is not set"),
    ({**SLURM, "SLURM_ARRAY_TASK_COUNT": "four"}, "SLURM_ARRAY_TASK_COUNT='four'"),
    ({"JOB_COMPLETION_INDEX": "1"}, "CAMCLI_SHARD_COUNT is not"),
    ({"JOB_COMPLETION_INDEX": "3", "CAMCLI_SHARD_COUNT": "3"}, "inconsistent Kubernetes"),
])
def test_auto_without_a_consistent_job_array_is_a_usage_error(environ, message):
    with pytest.raises(UsageError, match=message):
        from_environment(environ)


# --------------------------------------------------------------------------- through the CLI


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Nine photos in two folders, and a small saved model: unlike ``--weights none`` (new
    random weights in every process), a model file gives every run the same maps."""
    import keras

    root = tmp_path_factory.mktemp("shards")
    keras.utils.set_random_seed(5)
    model = keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Rescaling(1 / 255),
        keras.layers.Conv2D(8, 3, activation="relu", name="features"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(4),
    ])
    model.save(root / "tiny.keras")
    rng = np.random.default_rng(5)
    for i in range(9):
        folder = root / "photos" / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=(40 + i, 50, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"p{i}.png")
    return root


def _camcli(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CAMCLI), "explain", "photos", "-r", "--model", "tiny.keras", *args],
                          cwd=root, env=offline_env(root, **env), capture_output=True,
                          text=True, timeout=600)


def _outputs(folder: Path) -> dict[str, dict]:
    records = {}
    for path in sorted(folder.rglob("*.cam.json")):
        record = json.loads(path.read_text())
        records[str(path.relative_to(folder))] = record
    return records


def _summary(run) -> str:
    lines = nonblank_lines(run.stderr)
    assert len(lines) == 1, run.stderr
    return lines[0]


def test_two_shards_cover_a_single_run_exactly_once(photos):
    # The unsharded run and both shards are independent: started together, as a job array would.
    base = ["explain", "photos", "-r", "--model", "tiny.keras"]
    whole, *runs = run_all([
        [*base, "-o", "whole", "-q"],
        *[[*base, "-o", f"shard{k}", "--shard", f"{k}/2", "--json"] for k in (1, 2)],
    ], photos, timeout=600)
    assert whole.returncode == 0, whole.stderr
    taken = []
    for k, run in enumerate(runs, start=1):
        assert run.returncode == 0, run.stderr
        lines = [json.loads(line) for line in nonblank_lines(run.stdout)]
        taken.append(len(lines))
        assert _summary(run).startswith(f"camcli: shard {k}/2: {len(lines)} of 9 inputs, "
                                        f"{len(lines)} done, 0 failed")
    assert sum(taken) == 9 and min(taken) > 0
    one, two = _outputs(photos / "shard1"), _outputs(photos / "shard2")
    assert not set(one) & set(two)
    single = _outputs(photos / "whole")
    assert set(one) | set(two) == set(single)
    for name, record in {**one, **two}.items():
        assert record["explanations"] == single[name]["explanations"]
        assert record["settings_fingerprint"] == single[name]["settings_fingerprint"]


def test_a_shard_resumes_with_skip_existing(photos):
    first = _camcli(photos, "-o", "resume", "--shard", "2/3", "-q")
    assert first.returncode == 0, first.stderr
    again = _camcli(photos, "-o", "resume", "--shard", "2/3", "--skip-existing")
    assert again.returncode == 0, again.stderr
    done = len(_outputs(photos / "resume"))
    assert _summary(again).startswith(f"camcli: shard 2/3: {done} of 9 inputs, 0 done, "
                                      f"{done} skipped, 0 failed")


def test_shard_auto_through_the_cli_and_its_usage_errors(photos):
    env = {"SLURM_ARRAY_TASK_ID": "11", "SLURM_ARRAY_TASK_MIN": "10",
           "SLURM_ARRAY_TASK_COUNT": "2"}
    auto = _camcli(photos, "-o", "auto", "--shard", "auto", "--json", "-q", **env)
    assert auto.returncode == 0, auto.stderr
    explained = {json.loads(line)["input"]["path"] for line in nonblank_lines(auto.stdout)}
    every = {str(p.relative_to(photos)) for p in (photos / "photos").rglob("*.png")}
    assert explained == {path for path in every if Shard(2, 2).owns(path)}
    assert 0 < len(explained) < len(every)
    for args in (("--shard", "auto"), ("--shard", "3/2"), ("--shard", "half")):
        run = _camcli(photos, *args, **JOB_ARRAY_UNSET)
        assert run.returncode == 2
        lines = nonblank_lines(run.stderr)
        assert len(lines) == 1 and lines[0].startswith("camcli: error: --shard"), run.stderr


#: Whatever job array the tests themselves run in, the child sees none.
JOB_ARRAY_UNSET = {name: "" for name in (
    "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_STEP", "JOB_COMPLETION_INDEX", "CAMCLI_SHARD_COUNT")}
