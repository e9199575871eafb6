"""``--engine ray``: the same program on a Ray cluster — same outputs, exit codes, faults.

One Ray head serves the module (``ray_cluster`` in conftest: 2 CPUs, on loopback in the
session's own network namespace). Every run here is compared with one local run of the same
folder — real photos, small synthetic images in a sub-folder and three bad inputs — made
with the bundled MobileNet's real weights: records equal key for key, overlays and maps equal
byte for byte, the same failure lines on stderr (the two batch the inputs differently: see
test_engine's batch test for why that does not show). Then the faults: a worker SIGKILLed
mid-run, Ctrl-C on the driver then ``--skip-existing``, an unreachable cluster, a Ray that
cannot start, Ray not installed; and the Python API over a Ray dataset.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import CAMCLI, json_lines, offline_env
from PIL import Image

SAMPLES = Path(__file__).resolve().parent.parent / "sample_images"
MODEL = ("--model", "mobilenet_v1_0.25_224")  # bundled: real weights, offline
OPTIONS = (*MODEL, "--top-k-cams", "2", "--save-heatmap", "--batch-size", "4", "-r")
BAD = {"truncated.jpg", "notes.jpg", "empty.png"}
ON_RAY = ("--engine", "ray", "--ray-workers", "1", "--ray-cpus", "2")


def _inputs(folder: Path) -> None:
    folder.mkdir()
    for sample in SAMPLES.glob("*.*g"):
        (folder / sample.name).write_bytes(sample.read_bytes())
    rng = np.random.default_rng(3)
    (folder / "small").mkdir()
    for i in range(28):
        width, height = int(rng.integers(96, 320)), int(rng.integers(96, 320))
        base = rng.integers(0, 256, (1, 1, 3))
        pixels = np.clip(base + rng.normal(0, 40, (height, width, 3)), 0, 255).astype(np.uint8)
        suffix = ".jpg" if i % 2 else ".png"
        Image.fromarray(pixels).save(folder / "small" / f"s{i:02d}{suffix}")
    whole = (SAMPLES / "rocket.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 3])
    (folder / "notes.jpg").write_text("not a picture\n")
    (folder / "empty.png").write_bytes(b"")


def _env(home: Path, cluster=None, **extra) -> dict:
    """Offline, no proxy for loopback, and the session cluster's token when given."""
    env = offline_env(home, **extra)
    env.update(NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
               RAY_USAGE_STATS_ENABLED="0", **(cluster.auth if cluster else {}))
    return env


def _camcli(cwd: Path, *args: str, env: dict, timeout: int = 600):
    return subprocess.run([str(CAMCLI), "explain", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _outputs(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path (records parsed, so key order is moot)."""
    found: dict = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            key = str(path.relative_to(folder))
            if key.startswith("camcli-failures/"):  # runs' logs, named by time and pid
                lines = found.setdefault("camcli-failures/", set())
                lines.update(path.read_text().splitlines())
                continue
            found[key] = json.loads(path.read_bytes()) if key.endswith(".json") else \
                path.read_bytes()
    return found


def _failure_lines(stderr: str) -> list[str]:
    return sorted(line for line in stderr.splitlines() if not line.startswith("camcli: "))


@pytest.fixture(scope="module")
def local(tmp_path_factory, ray_cluster):
    """The folder and one local run of it (--out-dir local/): the reference; ``env`` reaches
    the session's cluster."""
    root = tmp_path_factory.mktemp("ray-same")
    _inputs(root / "in")
    env = _env(root, ray_cluster)
    done = _camcli(root, "in", *OPTIONS, "--out-dir", "local", "--json", env=env)
    assert done.returncode == 1, done.stderr  # the three bad inputs
    outputs = _outputs(root / "local")
    assert sum(k.endswith(".cam.json") for k in outputs) == 4 + 28
    return root, env, done, outputs


def _compare(local_outputs: dict, folder: Path) -> None:
    outputs = _outputs(folder)
    assert sorted(outputs) == sorted(local_outputs), "different files (or leftovers)"
    for name, content in local_outputs.items():
        assert outputs[name] == content, f"{name} differs from the local run's"


def test_same_outputs_exit_codes_and_lines_as_a_local_run(local, ray_cluster):
    root, env, reference, local_outputs = local
    done = _camcli(root, "in", *OPTIONS, "--out-dir", "ray", "--json", *ON_RAY,
                   "--ray-address", ray_cluster.address, env=env)
    assert done.returncode == 1, done.stderr
    _compare(local_outputs, root / "ray")
    # the same failure lines, then camcli's summary only: no Ray or TensorFlow chatter
    assert _failure_lines(done.stderr) == _failure_lines(reference.stderr)
    assert len(_failure_lines(done.stderr)) == len(BAD)
    camcli_lines = [line for line in done.stderr.splitlines() if line.startswith("camcli: ")]
    assert len(camcli_lines) == 1 and "32 done, 3 failed" in camcli_lines[0], done.stderr
    # --json: one line per input, as locally, the output folder aside
    lines = json_lines(done.stdout)  # done and failed lines, checked against the JSON Schema
    expected = json_lines(reference.stdout)
    assert {(line["ok"], line["skipped"]) for line in lines} == {(True, False), (False, False)}

    def key(line):
        line = dict(line, files=[f.split("/", 1)[1] for f in line.get("files", [])])
        return json.dumps(line, sort_keys=True)

    assert sorted(map(key, lines)) == sorted(map(key, expected))


def test_a_worker_killed_mid_run_is_restarted_and_nothing_is_lost_or_doubled(local, ray_cluster):
    root, env, reference, local_outputs = local
    process, first = _started(root, env, "in", *OPTIONS, "--out-dir", "killed", "--json",
                              *ON_RAY, "--batch-size", "2", "--ray-address", ray_cluster.address)
    victims = _workers()
    assert len(victims) == 1, f"expected one camcli worker, found {victims}"
    os.kill(victims[0], signal.SIGKILL)
    rest, stderr = _rest(process, timeout=600)
    assert process.returncode == 1, stderr  # the three bad inputs, as locally
    inputs = _json_inputs([first, *rest.splitlines()])
    expected = _json_inputs(reference.stdout.splitlines())
    assert len(inputs) == len(set(inputs)), "an input twice"
    assert sorted(inputs) == sorted(expected), (set(expected) - set(inputs), stderr)
    assert _workers() != victims, "the killed worker was not replaced"
    _compare(local_outputs, root / "killed")  # no half-written, duplicate or stray files


def test_two_nodes_share_the_work_and_a_node_lost_mid_run_loses_no_input(local, ray_cluster):
    """A second node joins the session's head (both on loopback), one worker on each; once the
    second node's worker has done a batch, the node is killed whole (its raylet and worker):
    every input still comes once — explained, equal to the local run's, or failed by name."""
    root, env, reference, local_outputs = local
    node = _second_node(ray_cluster, root)
    try:
        with open(root / "two-nodes.jsonl", "wb") as out:
            process = subprocess.Popen(
                [str(CAMCLI), "explain", "in", *OPTIONS, "--out-dir", "two-nodes", "--json",
                 "--engine", "ray", "--ray-workers", "2", "--ray-cpus", "2", "--batch-size", "2",
                 "--debug", "--ray-address", ray_cluster.address],
                cwd=root, stdout=out, stderr=subprocess.PIPE, text=True,
                # Ray Data starts the work once both workers are up (not with the first one
                # ready, which on a fast run could take every batch before the other loads)
                env=dict(env, RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S="300"))
        stderr, nodes, killed_mid_run = [], {}, None
        for line in process.stderr:  # --debug: each worker says which node runs its batch
            stderr.append(line)
            batch = re.search(r"camcli: worker \S+ on node (\w+): a batch", line)
            if batch:
                nodes[batch[1]] = nodes.get(batch[1], 0) + 1
                if batch[1] == node.id and node.process.poll() is None:
                    killed_mid_run = process.poll() is None
                    os.killpg(node.process.pid, signal.SIGKILL)  # mid-run: the whole node
                    node.process.wait()
        process.wait(600)
    finally:
        _stop(node.process)
    stderr = "".join(stderr)
    (root / "two-nodes.stderr").write_text(stderr)
    assert node.id in nodes and len(nodes) == 2, (nodes, stderr[-3000:])
    assert killed_mid_run, "the second node was not killed while the run went on"
    assert process.returncode == 1, stderr[-3000:]  # the bad inputs (and any lost one)
    lines = json_lines((root / "two-nodes.jsonl").read_text())  # of the schema
    inputs = [line["input"]["path"] for line in lines]
    expected = _json_inputs(reference.stdout.splitlines())
    assert len(inputs) == len(set(inputs)) and sorted(inputs) == sorted(expected), stderr[-3000:]
    lost = {line["input"]["path"] for line in lines
            if not line["ok"] and line["error"].startswith("lost")}
    failed = sum(not line["ok"] for line in lines)
    assert f"camcli: {len(lines) - failed} done, {failed} failed in " in stderr  # the count
    outputs = _outputs(root / "two-nodes")
    for name, content in local_outputs.items():
        if name != "camcli-failures/" and name.split(".cam")[0] not in lost:
            assert outputs.get(name) == content, f"{name} differs from the local run's"


def _second_node(cluster, root: Path):
    """``ray start --block`` joining ``cluster`` (2 CPUs), in a process group of its own; its
    node's id (``id``) once the head counts two nodes."""
    from types import SimpleNamespace

    ray = CAMCLI.with_name("ray")
    log = open(root / "second-node.log", "wb")
    process = subprocess.Popen(
        [str(ray), "start", f"--address={cluster.address}", "--num-cpus=2", "--block",
         f"--object-store-memory={200 * 1024**2}", "--disable-usage-stats"],
        env=cluster.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, (root / "second-node.log").read_text()[-2000:]
        for pid in _group(process.pid):
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            ids = [c.split(b"=", 1)[1].decode() for c in command if c.startswith(b"--node_id=")]
            if ids and b"raylet" in command[0]:
                status = subprocess.run([str(ray), "status", f"--address={cluster.address}"],
                                        env=cluster.env, capture_output=True, text=True)
                if status.stdout.count("node_") >= 2 and "4.0 CPU" in status.stdout:
                    return SimpleNamespace(process=process, id=ids[0])
        time.sleep(1)
    _stop(process)
    raise AssertionError("the second node did not join in 120 s")


def _group(pgid: int) -> list[int]:
    """The processes of process group ``pgid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _started(cwd: Path, env: dict, *args: str) -> tuple[subprocess.Popen, str]:
    """``camcli explain *args`` started, and its first stdout line once it is written.

    Unbuffered on purpose: a buffered ``readline`` may read the lines after the first from the
    pipe too, and ``communicate`` (which reads the pipe, not that buffer) would lose them.
    """
    process = subprocess.Popen([str(CAMCLI), "explain", *args], cwd=cwd, env=env, bufsize=0,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = process.stdout.readline().decode()  # a raw pipe: byte by byte, up to the newline
    assert first, process.stderr.read().decode()
    return process, first


def _rest(process: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """What :func:`_started`'s process writes after its first line, and its stderr."""
    rest, stderr = process.communicate(timeout=timeout)
    return rest.decode(), stderr.decode()


def _json_inputs(lines: list[str]) -> list[str]:
    """The input of each ``--json`` line."""
    return [line["input"]["path"] for line in json_lines("\n".join(lines))]


def _workers() -> list[int]:
    """PIDs of the Ray actors running camcli's worker (Ray names the process after it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if command.startswith(b"ray::MapWorker") and b"Worker" in command:
                found.append(int(entry.name))
    return sorted(found)


def test_ctrl_c_on_the_driver_exits_130_and_skip_existing_resumes(local, ray_cluster):
    """With no --ray-address: a local Ray instance started for the run, stopped with it. The
    resumed run uses the session's cluster (a second instance would only cost time)."""
    root, cluster_env, _, local_outputs = local
    env = {k: v for k, v in cluster_env.items() if not k.startswith("RAY_AUTH")}
    env["RAY_ADDRESS"] = ""
    args = ["in", *OPTIONS, "--out-dir", "stopped", "--json", *ON_RAY, "--batch-size", "2"]
    process, first = _started(root, env, *args)
    process.send_signal(signal.SIGINT)
    rest, stderr = _rest(process, timeout=300)
    assert process.returncode == 130, stderr
    assert "camcli: interrupted: " in stderr, stderr
    shown = json_lines(first + rest)  # an interrupted run's lines: whole, of the schema
    written = _outputs(root / "stopped")
    records = [k for k in written if k.endswith(".cam.json")]
    assert 0 < len(records) < 32, "the run should have stopped part-way"
    # the driver waits for the batches in progress: every record written has its --json line
    explained = {line["input"]["path"] for line in shown if line["ok"]}
    assert {name.removesuffix(".cam.json") for name in records} <= explained, explained
    for name in written:  # whatever was written is complete and the local run's
        if name == "camcli-failures/":  # the failures met before the stop
            assert written[name] <= local_outputs[name]
        else:
            assert written[name] == local_outputs[name], name
    resumed = _camcli(root, *args, "--skip-existing", "--ray-address", ray_cluster.address,
                      env=cluster_env)
    assert resumed.returncode == 1, resumed.stderr
    summary = resumed.stderr.strip().splitlines()[-1]
    assert f"{32 - len(records)} done, {len(records)} skipped, 3 failed" in summary, summary
    skipped = [line for line in json_lines(resumed.stdout) if line["skipped"]]
    assert len(skipped) == len(records)  # skipped lines from the workers, of the schema too
    _compare(local_outputs, root / "stopped")


def test_an_unreachable_cluster_is_one_error_and_exit_2(tmp_path):
    with __import__("socket").socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the probe is: nothing listens there
    (tmp_path / "a.png").write_bytes((SAMPLES / "coffee.png").read_bytes())
    done = _camcli(tmp_path, "a.png", *MODEL, *ON_RAY, "--ray-address", f"127.0.0.1:{port}",
                   env=_env(tmp_path))
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"camcli: error: cannot reach the Ray cluster at 127.0.0.1:{port}: Connection refused"
    ]
    assert done.stdout == "" and not list(tmp_path.glob("*.cam.*"))


def test_a_cluster_refusing_our_token_is_one_error_and_exit_2(tmp_path, ray_cluster):
    env = _env(tmp_path, ray_cluster)
    env["RAY_AUTH_TOKEN"] = "0" * 64
    done = _camcli(tmp_path, "a.png", *MODEL, *ON_RAY, "--ray-address", ray_cluster.address,
                   env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"camcli: error: cannot connect to the Ray cluster at {ray_cluster.address}: it wants "
        "its authentication token (set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH, to the "
        "cluster's)"
    ]


def test_a_ray_that_cannot_start_is_one_error_and_exit_2(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    (tmp_path / "a.png").write_bytes((SAMPLES / "coffee.png").read_bytes())
    env = _env(tmp_path, RAY_TMPDIR=str(blocker / "ray"), RAY_ADDRESS="")
    done = _camcli(tmp_path, "a.png", *MODEL, *ON_RAY, env=env)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("camcli: error: cannot start a local Ray instance: "), line


def test_nothing_to_explain_starts_no_ray_and_reaches_no_cluster(tmp_path):
    """An empty folder, an empty stdin: the local run's "0 done" and exit 0, at once. Ray
    could not start here (its temporary folder is a file) nor reach the cluster named (nothing
    listens): either would have been an error (exit 2) had camcli tried."""
    (tmp_path / "empty").mkdir()
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    env = _env(tmp_path, RAY_TMPDIR=str(blocker / "ray"), RAY_ADDRESS="")
    with __import__("socket").socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"
    runs = [_camcli(tmp_path, "empty", *MODEL, *ON_RAY, env=env, timeout=120),
            subprocess.run([str(CAMCLI), "explain", "-", *MODEL, *ON_RAY, "--ray-address",
                            closed, "--json"], cwd=tmp_path, env=env, input="",
                           capture_output=True, text=True, timeout=120)]
    for done in runs:
        assert done.returncode == 0, done.stderr
        assert done.stdout == ""
        assert "camcli: 0 done, 0 failed in " in done.stderr, done.stderr
    assert not list(tmp_path.rglob("*.cam.*"))


def test_without_ray_installed_the_error_says_what_to_install(tmp_path):
    fake = tmp_path / "no-ray"
    (fake / "ray").mkdir(parents=True)
    (fake / "ray" / "__init__.py").write_text("raise ImportError('no ray here', name='ray')\n")
    env = _env(tmp_path, PYTHONPATH=str(fake))
    done = _camcli(tmp_path, "a.png", *MODEL, "--engine", "ray", env=env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "camcli: error: --engine ray needs Ray Data (ray is missing): pip install 'camcli[ray]'"
    ]


def test_bad_options_fail_on_the_driver_before_any_cluster(tmp_path):
    done = _camcli(tmp_path, "a.png", "--model", "resnet5", *ON_RAY, "--ray-address",
                   "127.0.0.1:9", env=_env(tmp_path))
    assert done.returncode == 2
    assert done.stderr.splitlines()[0].startswith("camcli: error: unknown model 'resnet5'")
    done = _camcli(tmp_path, "a.png", *MODEL, "--engine", "spark", env=_env(tmp_path))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "camcli: error: unknown engine 'spark'; choose from local, ray"
    ]


def test_a_model_the_workers_cannot_load_stops_the_run_with_its_reason(local, ray_cluster):
    root, env, _, _ = local
    done = _camcli(root, "in/coffee.png", *MODEL, "--layer", "no_such_layer", *ON_RAY,
                   "--ray-address", ray_cluster.address, "--out-dir", "bad-layer", env=env)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("camcli: error: ") and "no_such_layer" in line, line
    assert not (root / "bad-layer").exists()


# --------------------------------------------------------------------------- Python API


API_SCRIPT = """
import json, sys
from pathlib import Path
import ray
import camcli.ray

address, folder, out = sys.argv[1:]
ray.init(address=address, log_to_driver=False)
images = ray.data.read_binary_files(folder, include_paths=True)
rows = camcli.ray.explain_dataset(
    images, model="mobilenet_v1_0.25_224", top_k_cams=2, save_heatmap=True, batch_size=4,
    out_dir=out, workers=1, cpus=1,  # a CPU left for the reads
)
print(json.dumps({"lazy": not Path(out).exists(), "rows": rows.take_all()}))
"""


def test_explain_dataset_maps_a_ray_dataset_of_bytes_lazily(local, ray_cluster):
    """camcli.ray.explain_dataset in a driver of its own (a Python program using Ray)."""
    root, env, _, local_outputs = local
    done = subprocess.run(
        [str(CAMCLI.with_name("python")), "-c", API_SCRIPT, ray_cluster.address,
         str(root / "in" / "small"), str(root / "api")],
        cwd=root, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["lazy"], "explain_dataset must not run before its rows are asked for"
    found = result["rows"]
    assert len(found) == 28 and all(row["ok"] for row in found), found
    for row in found:
        name = Path(row["input"]).name
        record = json.loads(row["record"])
        expected = local_outputs[f"in/small/{name}.cam.json"]
        assert record["predictions"] == expected["predictions"]
        assert record["explanations"] == expected["explanations"]
        assert row["top1_label"] == expected["predictions"][0]["label"]
        written = {Path(f).name: Path(f) for f in row["files"]}
        assert all(str(f).startswith(str(root / "api")) for f in written.values())
        for entry in record["explanations"]:
            for name in (entry["overlay"], entry["heatmap"]):
                assert written[name].read_bytes() == local_outputs[f"in/small/{name}"]


def test_a_full_disk_stops_a_ray_run_as_a_local_one_and_skip_existing_finishes_it(
        ray_cluster, tmp_path):
    """The local full-disk policy on Ray: the same streak, the same message, exit 1; the
    writes in progress end before the driver goes (no temporary file is left); then, with
    room, ``--skip-existing`` on Ray does what is missing."""
    from cli_helpers import SMALL_MODEL, check_output_sets, check_stopped_when_full, mounted_tmpfs

    from camcli.runner import STOP_AFTER_FULL_WRITES

    with mounted_tmpfs(tmp_path / "out") as disk:
        (tmp_path / "in").mkdir()
        count = 40  # enough that the run stops with a batch in progress
        for i in range(count):  # noise: each overlay is ~360 kB, the disk holds two or three
            pixels = np.random.default_rng(i).integers(0, 256, (300, 400, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "in" / f"img{i:02d}.png", compress_level=1)
        env = _env(tmp_path, ray_cluster)
        args = ["in", "-o", "out", *SMALL_MODEL, *ON_RAY, "--batch-size", "2",
                "--ray-address", ray_cluster.address]
        run = _camcli(tmp_path, *args, "--json", env=env)
        # the local policy and lines; nothing else on stderr (no "stopped waiting" for a
        # batch that Ray Data ended before its writes ended)
        done = check_stopped_when_full(run, count, STOP_AFTER_FULL_WRITES)
        first = check_output_sets(disk)  # complete sets only, no temporary or lock file
        assert len(first) >= done  # (a batch in progress when the run stopped may have fit)

        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        rerun = _camcli(tmp_path, *args, "--skip-existing", env=env)
        assert rerun.returncode == 0, rerun.stderr
        assert f"{count - len(first)} done, {len(first)} skipped, 0 failed" in rerun.stderr, \
            rerun.stderr
        assert len(check_output_sets(disk)) == count


def test_a_slow_precision_is_one_warning_line_on_the_driver_as_locally(ray_cluster, tmp_path):
    """The workers load the model, so they find float16 slow here (no GPU): the driver shows
    the local run's warning line, once for all the batches, and nothing else but the
    summary."""
    from camcli.precision import cpu_flags, slow_reason

    (tmp_path / "in").mkdir()
    for name in ("coffee.png", "rocket.jpg", "astronaut.png"):
        (tmp_path / "in" / name).write_bytes((SAMPLES / name).read_bytes())
    env = _env(tmp_path, ray_cluster)
    args = ["in", *MODEL, "--precision", "float16", "--batch-size", "1"]
    local = _camcli(tmp_path, *args, "-o", "local", env=env)
    on_ray = _camcli(tmp_path, *args, "-o", "ray", *ON_RAY, "--ray-address",
                     ray_cluster.address, env=env)
    assert local.returncode == on_ray.returncode == 0, (local.stderr, on_ray.stderr)
    (warning, summary) = local.stderr.splitlines()
    # the reason depends on this CPU's flags (emulated, or TensorFlow's slow float16 kernels)
    assert warning == f"camcli: warning: {slow_reason('float16', cpu_flags(), 0)}", local.stderr
    assert "slower than float32" in warning
    lines = on_ray.stderr.splitlines()
    assert lines[:-1] == [warning], on_ray.stderr
    assert lines[-1].startswith("camcli: 3 done, 0 failed in "), on_ray.stderr


# --------------------------------------------------------------------------- the driver's books


def test_inputs_of_a_batch_given_up_are_reported_by_name_once():
    """What the driver does when Ray Data gives up a batch (its worker died 4 times): the rows
    that came back are passed on, and every input whose row never came is a failed result
    naming it — none twice, none forgotten. Ray's part is replaced by lists here."""
    import threading

    import pyarrow as pa

    from camcli.distributed import ray as engine
    from camcli.distributed.ray import _row

    tables = [pa.table({"path": [f"in/b{b}-{i}.png" for i in range(4)]}) for b in range(3)]

    class FakeRay:  # the object store: a block's reference is its index
        @staticmethod
        def get(ref):
            return tables[ref]

    def row(block, index):
        result = engine.ImageResult(Path(f"in/b{block}-{index}.png"), ok=True, skipped=True)
        return {**_row(result), "block": block, "index": index}

    # block 1 never came back; block 2 only in part (the worker died after two rows)
    batches = [pa.Table.from_pylist([row(0, i) for i in range(4)]),
               pa.Table.from_pylist([row(2, 0), row(2, 3)])]

    class FakeDataset:
        def iter_batches(self, **_):
            return iter(batches)

    results = list(engine._stream(FakeRay, FakeDataset(), [0, 1, 2], [4, 4, 4], None,
                                  threading.Event(), engine.storage.NO_OPTIONS))
    passed = sorted(str(r.path) for r in results if r.ok)
    lost = sorted(str(r.path) for r in results if not r.ok)
    assert passed == ["in/b0-0.png", "in/b0-1.png", "in/b0-2.png", "in/b0-3.png",
                      "in/b2-0.png", "in/b2-3.png"]
    assert lost == ["in/b1-0.png", "in/b1-1.png", "in/b1-2.png", "in/b1-3.png",
                    "in/b2-1.png", "in/b2-2.png"]
    assert all(r.error.startswith("lost: Ray gave its batch up, its worker dead")
               for r in results if not r.ok)


# --------------------------------------------------------------------------- object storage


@pytest.fixture(scope="module")
def s3_local(s3_server, ray_cluster, tmp_path_factory):
    """Inputs in a bucket (six images, one broken, one unreadable) and one local run of them
    to ``s3://ray-out/local/``, its credentials given as --storage-option only; ``objects``
    reads a run's outputs back. The session cluster was started without any credentials."""
    import io
    from types import SimpleNamespace

    client = s3_server.client()
    client.create_bucket(Bucket="ray-in")
    client.create_bucket(Bucket="ray-out")
    rng = np.random.default_rng(5)
    for i in range(6):
        buffer = io.BytesIO()
        size = (int(rng.integers(64, 200)), int(rng.integers(64, 200)))
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buffer, "JPEG")
        client.put_object(Bucket="ray-in", Key=f"set/img{i}.jpg", Body=buffer.getvalue())
    client.put_object(Bucket="ray-in", Key="set/broken.jpg", Body=b"not a jpeg")
    client.put_object(Bucket="ray-in", Key="set/secret/hidden.jpg", Body=b"unreadable")
    credentials = []
    for option in (f"key={s3_server.env['AWS_ACCESS_KEY_ID']}",
                   f"secret={s3_server.env['AWS_SECRET_ACCESS_KEY']}",
                   f"endpoint_url={s3_server.endpoint}"):
        credentials += ["--storage-option", option]
    home = tmp_path_factory.mktemp("ray-s3")
    env = _env(home, ray_cluster)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        env.pop(name, None)

    def explain(where, *args, env=env):
        return _camcli(home, "s3://ray-in/set/", "-r", *MODEL, "--batch-size", "2",
                       "-o", f"s3://ray-out/{where}/", *args, env=env)

    def objects(prefix):
        pages = client.get_paginator("list_objects_v2").paginate(Bucket="ray-out", Prefix=prefix)
        keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
        return {key.removeprefix(prefix): client.get_object(Bucket="ray-out", Key=key)[
            "Body"].read() for key in keys if "camcli-failures" not in key}

    local = explain("local", *credentials)
    assert local.returncode == 1, local.stderr
    assert _failure_lines(local.stderr) == [
        "s3://ray-in/set/broken.jpg: not an image file Pillow can read",
        "s3://ray-in/set/secret/hidden.jpg: cannot read: access denied",
    ]
    outputs = objects("local/")
    assert len(outputs) == 12
    return SimpleNamespace(explain=explain, objects=objects, credentials=credentials, env=env,
                           local=local, outputs=outputs, home=home)


def _same_objects(s3_local, run, prefix: str) -> None:
    assert run.returncode == 1, run.stderr
    remote = s3_local.objects(prefix)
    assert sorted(remote) == sorted(s3_local.outputs)
    for key, data in s3_local.outputs.items():
        assert remote[key] == data, key


def test_s3_inputs_and_outputs_on_ray_match_a_local_run(s3_local, ray_cluster):
    """URLs in and out, credentials given as --storage-option only (the cluster's workers were
    started without any): the same objects as a local run, the same failure lines."""
    run = s3_local.explain("ray", *s3_local.credentials, *ON_RAY, "--ray-address",
                           ray_cluster.address)
    _same_objects(s3_local, run, "ray/")
    assert _failure_lines(run.stderr) == _failure_lines(s3_local.local.stderr)


def test_credentials_in_the_drivers_environment_reach_the_workers_unshown(
        s3_local, s3_server, ray_cluster):
    """Credentials and endpoint in the driver's environment only, as most users give them;
    the cluster was started without them: its workers get them with the run, and nothing
    shows the secret — not --debug's lines, nor Ray's logs on the cluster."""
    secret = s3_server.env["AWS_SECRET_ACCESS_KEY"]
    raylets = [pid for pid, command in _processes().items() if b"raylet/raylet" in command
               and ray_cluster.temp.encode() in command]
    assert raylets and all(secret not in _environ(pid) for pid in raylets), \
        "the session cluster should have been started without the credentials"
    env = dict(s3_local.env, **{k: s3_server.env[k] for k in (
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")})
    run = s3_local.explain("env", *ON_RAY, "--ray-address", ray_cluster.address, "--debug",
                           env=env)
    assert "camcli: debug: ray: " in run.stderr, run.stderr[-2000:]  # Ray's lines shown...
    assert secret not in run.stdout + run.stderr  # ...never the secret
    _same_objects(s3_local, run, "env/")
    lines = run.stderr.splitlines()
    assert all(line in lines for line in _failure_lines(s3_local.local.stderr)), run.stderr
    logs = [p for p in Path(ray_cluster.temp).rglob("*") if p.is_file() and not p.is_socket()]
    assert logs and not [p for p in logs if secret.encode() in p.read_bytes()], \
        "the secret is in Ray's files"


def _processes() -> dict[int, bytes]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found[int(entry.name)] = (entry / "cmdline").read_bytes()
            except OSError:
                continue
    return found


def _environ(pid: int) -> str:
    return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
