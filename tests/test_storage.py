"""Inputs and outputs as URLs (camcli.storage): memory:// units, a real S3 server, HTTP.

The S3 server is moto's, on loopback, started once per session (conftest ``s3_server``) with
authentication on, reached through s3fs exactly as a user's run reaches AWS or MinIO: the CLI
gets only ``AWS_ENDPOINT_URL`` and keys in its environment.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import re
import socket
import subprocess
import threading
from pathlib import Path

import fsspec
import numpy as np
import pytest
from cli_helpers import CAMCLI, SMALL_MODEL, WARNING, json_lines, offline_env, run_all
from PIL import Image

from camcli import storage
from camcli.errors import InputError, UsageError
from camcli.outputs import OutputPaths


def _jpeg(seed: int, size=(72, 56)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG")
    return buffer.getvalue()


def _camcli(*args: str, cwd: Path, stdin: str | None = None, **env: str):
    return subprocess.run(
        [str(CAMCLI), "explain", *SMALL_MODEL, *args], cwd=cwd, env=offline_env(cwd, **env),
        input=stdin, capture_output=True, text=True, timeout=300,
    )


def _camcli_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and line != WARNING]


# --------------------------------------------------------------------------- units: memory://


@pytest.fixture
def memory():
    fs = fsspec.filesystem("memory")
    fs.store.clear()
    fs.pseudo_dirs.clear()
    fs.pseudo_dirs.append("")
    return fs


def test_output_names_mirror_the_key_and_never_leave_the_url():
    url = storage.location("s3://photos/2024/cat.jpg")
    beside = OutputPaths.for_input(url)
    assert str(beside.record) == "s3://photos/2024/cat.jpg.cam.json"
    assert str(beside.overlay(281, "tabby cat", True)) == "s3://photos/2024/cat.jpg.cam.281_tabby_cat.png"
    out = storage.location("gs://results/cams/")
    assert str(OutputPaths.for_input(url, out).record) == "gs://results/cams/photos/2024/cat.jpg.cam.json"
    assert OutputPaths.for_input(url, Path("local")).record == Path(
        "local/photos/2024/cat.jpg.cam.json"
    )
    local = OutputPaths.for_input(Path("imgs/dog.png"), out).record
    assert str(local) == "gs://results/cams/imgs/dog.png.cam.json"
    assert storage.location("file:///tmp/x/a.jpg") == Path("/tmp/x/a.jpg")  # the local path


def test_secrets_are_redacted_from_urls_options_and_their_repr():
    options = storage.StorageOptions.parse(["secret=s3cr3t-VALUE", "anon=true", "n=3"])
    assert options.as_dict() == {"secret": "s3cr3t-VALUE", "anon": True, "n": 3}
    assert "s3cr3t" not in repr(options)
    url = storage.location("https://bob:hunter22@example.org/a.jpg?X-Amz-Signature=abc123")
    assert str(url) == "https://bob:***@example.org/a.jpg?X-Amz-Signature=***"
    assert url.name == "a.jpg"
    text = storage.redact(f"failed at {url.text} with key s3cr3t-VALUE")
    assert "hunter22" not in text and "abc123" not in text and "s3cr3t" not in text
    with pytest.raises(UsageError, match="KEY=VALUE"):
        storage.StorageOptions.parse(["novalue"])


SIGNED = ("https://b.s3.amazonaws.com/k/a.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256"
          "&X-Amz-Credential=AKIDEXAMPLE%2F20240101%2Fus-east-1%2Fs3%2Faws4_request"
          "&X-Amz-Date=20240101T000000Z&X-Amz-Expires=3600&X-Amz-Signature=9f1c0d")


@pytest.mark.parametrize(("text", "shown"), [
    # a password "1": that password, not every 1 of the line (was http://u:***@***27.0.0.***…)
    ("http://u:1@127.0.0.1:8080/x.jpg", "http://u:***@127.0.0.1:8080/x.jpg"),
    ("cannot read http://u:1@127.0.0.1:8080/x1.jpg: HTTP 401 after 1 try",
     "cannot read http://u:***@127.0.0.1:8080/x1.jpg: HTTP 401 after 1 try"),
    ("https://a:b@h.org/p/ and ftp://c:d@h.org/f.png",
     "https://a:***@h.org/p/ and ftp://c:***@h.org/f.png"),
    ("http://user@h.org/x.jpg", "http://user@h.org/x.jpg"),  # no password: nothing to hide
    ("s3://bucket/2024/01/cat.jpg", "s3://bucket/2024/01/cat.jpg"),
    # signed URLs: the signature and credential go, what says which object and when stays
    (SIGNED, "https://b.s3.amazonaws.com/k/a.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256"
             "&X-Amz-Credential=***&X-Amz-Date=20240101T000000Z&X-Amz-Expires=3600"
             "&X-Amz-Signature=***"),
    ("https://h.org/a.jpg?GoogleAccessId=x%40p.iam&Expires=17&Signature=abc%2B",
     "https://h.org/a.jpg?GoogleAccessId=x%40p.iam&Expires=17&Signature=***"),
    ("https://acct.blob.core.windows.net/c/a.jpg?sv=2022-11-02&sp=r&sig=a%3D 1",
     "https://acct.blob.core.windows.net/c/a.jpg?sv=2022-11-02&sp=r&sig=*** 1"),
    ("https://h.org/a.jpg?token=1&page=1#top", "https://h.org/a.jpg?token=***&page=1#top"),
    ("https://h.org/a.jpg?access_token=t;api_key=k&w=1",
     "https://h.org/a.jpg?access_token=***;api_key=***&w=1"),
    ("https://h.org/img.jpg?size=large&v=2", "https://h.org/img.jpg?size=large&v=2"),
])
def test_redaction_masks_a_secret_where_it_stands_not_its_value_everywhere(text, shown):
    for part in re.findall(r"\S+://\S+", text):
        storage.location(part)  # as a run meets its inputs: remembers their passwords
    assert storage.redact(text) == shown


def test_storage_option_values_are_masked_after_their_name_and_long_ones_anywhere():
    storage.StorageOptions.parse(["pw=1", 'client_kwargs={"aws_session_token": "7 8"}',
                                  "endpoint_url=http://127.0.0.1:9000"])
    assert storage.redact("pw=1, retries=1") == "pw=***, retries=1"
    assert storage.redact("{'pw': '1', 'aws_session_token': '7 8', 'tries': 1}") == \
        "{'pw': '***', 'aws_session_token': '***', 'tries': 1}"
    assert storage.redact("connecting to http://127.0.0.1:9000 failed 1 time") == \
        "connecting to *** failed 1 time"


def test_a_prefix_is_a_folder_and_globs_stream_matches(memory):
    for key in ("in/a.jpg", "in/b.png", "in/notes.txt", "in/sub/c.jpg", "in/sub/deep/d.jpg"):
        memory.pipe_file(f"memory://{key}", b"x")
    memory.pipe_file("memory://in/a.jpg.cam.json", b"{}")  # camcli's own output: never an input
    from camcli.images import discover

    names = [str(u) for u in discover(["memory://in/"])]
    assert names == ["memory://in/a.jpg", "memory://in/b.png"]
    deep = [str(u) for u in discover(["memory://in"], recursive=True)]
    assert deep == ["memory://in/a.jpg", "memory://in/b.png", "memory://in/sub/c.jpg",
                    "memory://in/sub/deep/d.jpg"]
    globbed = [str(u) for u in discover(["memory://in/**/*.jpg"])]
    assert globbed == ["memory://in/a.jpg", "memory://in/sub/c.jpg", "memory://in/sub/deep/d.jpg"]
    stdin = [str(u) for u in discover(["-"], stdin=["memory://in/b.png\n", "memory://in/b.png\n"])]
    assert stdin == ["memory://in/b.png"]


def test_puts_are_whole_and_never_overwrite_the_input(memory):
    source = storage.location("memory://in/scan")
    memory.pipe_file(source.text, b"input bytes")
    with pytest.raises(OSError, match="refusing to overwrite the input"):
        storage.put(source, b"x", protect=source)
    with pytest.raises(OSError, match="not a camcli output name"):
        storage.put(storage.location("memory://in/scan"), b"x", replaceable=False)
    target = storage.location("memory://out/scan.cam.png")
    storage.put(target, b"overlay", protect=source)
    assert memory.cat_file("memory://out/scan.cam.png") == b"overlay"
    assert storage.read_bytes(source) == b"input bytes"
    with pytest.raises(InputError, match="memory://in/missing.jpg: cannot read: not found"):
        storage.read_bytes(storage.location("memory://in/missing.jpg"))


def test_reads_stop_at_the_limit(memory, monkeypatch):
    url = storage.location("memory://in/big.jpg")
    memory.pipe_file(url.text, bytes(1000))
    assert storage.read_bytes(url, 1000) == bytes(1000)
    with pytest.raises(InputError, match="larger than the read limit of 999 bytes"):
        storage.read_bytes(url, 999)
    # the listing's size is enough to refuse: not one byte is fetched
    (listed,) = storage.expand(storage.location("memory://in/"), False, frozenset({".jpg"}))
    monkeypatch.setattr(type(memory), "cat_file", lambda *a, **k: pytest.fail("fetched"))
    with pytest.raises(InputError, match="larger than the read limit of 10 bytes"):
        storage.read_bytes(listed, 10)


def test_preflight_names_the_missing_extra_and_refuses_writing_to_the_web():
    with pytest.raises(UsageError, match=r"pip install 'camcli\[gcs\]'"):
        storage.preflight(["gs://bucket/prefix/"], None)
    with pytest.raises(UsageError, match="give --out-dir"):
        storage.preflight(["https://example.org/a.jpg"], None)
    with pytest.raises(UsageError, match="read-only"):
        storage.preflight(["a.jpg"], "https://example.org/out/")
    with pytest.raises(UsageError, match="unknown URL scheme"):
        storage.preflight(["nosuchscheme://x/y/"], None)


def test_versions_compare_by_etag_then_modification_time():
    assert storage.same_version({"size": 3, "etag": "a"}, {"size": 3, "etag": "a"})
    assert not storage.same_version({"size": 3, "etag": "a"}, {"size": 3, "etag": "b"})
    assert not storage.same_version({"size": 3, "etag": "a"}, {"size": 4, "etag": "a"})
    assert storage.same_version({"size": 3, "modified": 1.5}, {"size": 3, "modified": 1.5})
    assert not storage.same_version({"size": 3, "modified": 1.5}, {"size": 3, "modified": 2.0})
    assert not storage.same_version({"size": 3}, {"size": 3})  # nothing to tell them apart


# --------------------------------------------------------------------------- a real S3 server


def _s3fs(server):
    return fsspec.filesystem(
        "s3", key=server.env["AWS_ACCESS_KEY_ID"], secret=server.env["AWS_SECRET_ACCESS_KEY"],
        endpoint_url=server.endpoint, skip_instance_cache=True,
    )


def test_a_large_prefix_is_listed_page_by_page(s3_server, monkeypatch):
    client = s3_server.client()
    client.create_bucket(Bucket="many")
    for i in range(12):
        client.put_object(Bucket="many", Key=f"k/{i:05d}.jpg", Body=b"x")
    monkeypatch.setattr(storage, "S3_PAGE_KEYS", 5)  # S3's pages hold 1,000 keys
    fs = _s3fs(s3_server)
    calls = []
    original = fs._call_s3

    async def counting(method, *args, **kwargs):
        calls.append(method)
        return await original(method, *args, **kwargs)

    fs._call_s3 = counting
    found = storage._iter_files(fs, storage.location("s3://many/k/"), recursive=True)
    first = next(found)
    assert str(first) == "s3://many/k/00000.jpg"
    assert calls == ["list_objects_v2"]  # one page, not the whole prefix
    rest = list(found)
    assert [str(u) for u in rest] == [f"s3://many/k/{i:05d}.jpg" for i in range(1, 12)]
    assert calls == ["list_objects_v2"] * 3
    assert rest[0].info["ETag"]  # the listing's version, for --skip-existing without a HEAD


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    """A local http.server on 127.0.0.1 serving one image, one whose connection drops after
    100 of its bytes (``dropped.jpg``), and 404 for anything else."""
    root = tmp_path_factory.mktemp("web")
    (root / "shared.jpg").write_bytes(_jpeg(7))

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/dropped.jpg":
                return super().do_GET()
            self.send_response(200)
            self.send_header("Content-Length", "5000")
            self.end_headers()
            self.wfile.write(_jpeg(8)[:100])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True

        def log_message(self, *args):
            pass

    handler = functools.partial(Handler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def bucket(s3_server):
    """Bucket ``photos``: four images (one under sub/), a non-image and a key the user may
    not read (secret/); outputs go to bucket ``cams``."""
    client = s3_server.client()
    client.create_bucket(Bucket="photos")
    client.create_bucket(Bucket="cams")
    images = {f"set/img{i}.jpg": _jpeg(i) for i in range(3)}
    images["set/sub/deep.jpg"] = _jpeg(9, size=(40, 90))
    for key, data in images.items():
        client.put_object(Bucket="photos", Key=key, Body=data)
    client.put_object(Bucket="photos", Key="set/broken.jpg", Body=b"this is not a jpeg")
    client.put_object(Bucket="photos", Key="set/secret/hidden.jpg", Body=_jpeg(5))
    return client, images


def _keys(client, bucket: str, prefix: str = "") -> dict[str, str]:
    """key → ETag of every object under ``prefix``."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


def test_explain_a_prefix_into_another_bucket_then_resume(bucket, s3_server, tmp_path):
    client, images = bucket
    before = _keys(client, "photos")
    run = _camcli("s3://photos/set/", "-r", "-o", "s3://cams/run/", "--json", cwd=tmp_path,
                  **s3_server.env)
    assert run.returncode == 1, run.stderr  # two inputs failed, the others were written
    assert _camcli_lines(run.stderr)[:-1] == [
        "s3://photos/set/broken.jpg: not an image file Pillow can read",
        "s3://photos/set/secret/hidden.jpg: cannot read: access denied",
    ]
    assert "4 done, 2 failed" in run.stderr.splitlines()[-1]
    assert _keys(client, "photos") == before  # nothing written beside the inputs
    written = _keys(client, "cams", "run/")
    expected = {f"run/photos/{k}.cam.{s}" for k in images for s in ("json", "png")}
    assert set(written) == expected
    for key, data in images.items():
        record = json.loads(client.get_object(Bucket="cams", Key=f"run/photos/{key}.cam.json")[
            "Body"].read())
        assert record["input"]["path"] == f"s3://photos/{key}"
        assert record["input"]["sha256"] == hashlib.sha256(data).hexdigest()
        assert record["input"]["object"]["size"] == len(data)
        assert record["input"]["object"]["etag"] == before[key].strip('"')
        overlay = client.get_object(Bucket="cams", Key=f"run/photos/{key}.cam.png")["Body"].read()
        assert Image.open(io.BytesIO(overlay)).size == Image.open(io.BytesIO(data)).size

    # Resume: one input changed since; only it is recomputed, the rest are skipped.
    client.put_object(Bucket="photos", Key="set/img1.jpg", Body=_jpeg(101))
    again = _camcli("s3://photos/set/", "-r", "-o", "s3://cams/run/", "--json",
                    "--skip-existing", cwd=tmp_path, **s3_server.env)
    assert again.returncode == 1, again.stderr
    lines = json_lines(again.stdout)  # URL inputs: done lines name the object's version
    skipped = sorted(line["input"]["path"] for line in lines if line["skipped"])
    done = [line["input"]["path"] for line in lines if line["ok"] and not line["skipped"]]
    assert [set(line["input"]["object"]) for line in lines if line["input"]["sha256"]] == \
        [{"size", "etag", "modified"}]
    assert skipped == sorted(f"s3://photos/{k}" for k in images if k != "set/img1.jpg")
    assert done == ["s3://photos/set/img1.jpg"]
    after = _keys(client, "cams", "run/")
    changed = {key for key in after if after[key] != written[key]}
    assert changed <= {"run/photos/set/img1.jpg.cam.json", "run/photos/set/img1.jpg.cam.png"}
    assert "run/photos/set/img1.jpg.cam.json" in changed


def test_stdin_urls_a_deleted_key_and_http_inputs(bucket, s3_server, web, tmp_path):
    client, images = bucket
    client.put_object(Bucket="photos", Key="gone/soon.jpg", Body=_jpeg(3))
    listed = ["s3://photos/gone/soon.jpg", "s3://photos/set/img0.jpg"]
    client.delete_object(Bucket="photos", Key="gone/soon.jpg")  # deleted after it was listed
    urls = [*listed, f"{web}/shared.jpg", f"{web}/missing.jpg", f"{web}/dropped.jpg"]
    run = _camcli("-", "-o", "s3://cams/mixed/", cwd=tmp_path, stdin="\n".join(urls) + "\n",
                  **s3_server.env)
    assert run.returncode == 1, run.stderr
    dropped, missing, gone = sorted(_camcli_lines(run.stderr)[:-1])
    assert dropped.startswith(f"{web}/dropped.jpg: cannot read: ")  # aiohttp's payload error
    assert missing == f"{web}/missing.jpg: cannot read: not found (no such bucket, key or page)"
    assert gone == "s3://photos/gone/soon.jpg: cannot read: not found (no such bucket, key or page)"
    host = web.split("://")[1].split(":")[0]
    written = set(_keys(client, "cams", "mixed/"))
    assert written == {
        "mixed/photos/set/img0.jpg.cam.json", "mixed/photos/set/img0.jpg.cam.png",
        f"mixed/{host}/shared.jpg.cam.json", f"mixed/{host}/shared.jpg.cam.png",
    }


def test_a_prefix_that_cannot_be_listed_is_a_usage_error_without_secrets(s3_server, tmp_path):
    wrong = {**s3_server.env, "AWS_ACCESS_KEY_ID": "AKIAWRONGWRONG",
             "AWS_SECRET_ACCESS_KEY": "wrong-secret-do-not-print"}
    run, missing = run_all([  # independent: started together, each start-up costs seconds
        (["explain", *SMALL_MODEL, "s3://photos/set/", "--debug", "--storage-option",
          "client_kwargs={\"region_name\": \"us-east-1\"}"], offline_env(tmp_path, **wrong)),
        (["explain", *SMALL_MODEL, "s3://no-such-bucket/x/"],
         offline_env(tmp_path, **s3_server.env)),
    ], tmp_path)
    assert run.returncode == 2, run.stderr
    assert "camcli: error: s3://photos/set/: cannot list: access denied" in run.stderr
    assert WARNING not in run.stderr  # the model was never loaded
    assert "wrong-secret-do-not-print" not in run.stderr + run.stdout

    assert missing.returncode == 2, missing.stderr
    assert _camcli_lines(missing.stderr) == [
        "camcli: error: s3://no-such-bucket/x/: cannot list: "
        "not found (no such bucket, key or page)"
    ]


def test_two_shards_of_a_prefix_cover_it_once(bucket, s3_server, tmp_path):
    client, images = bucket
    seen = []
    runs = run_all([  # the two shards run at once, as a job array runs them
        (["explain", *SMALL_MODEL, "s3://photos/set/", "-r", "-o", "s3://cams/sharded/",
          "--json", "--shard", f"{k}/2"], offline_env(tmp_path, **s3_server.env))
        for k in (1, 2)
    ], tmp_path)
    for k, run in enumerate(runs, start=1):
        assert run.returncode in (0, 1), run.stderr
        assert f"shard {k}/2: " in run.stderr.splitlines()[-1]
        seen.append({line["input"]["path"] for line in json_lines(run.stdout)})
    assert not seen[0] & seen[1]
    every = {f"s3://photos/{key}" for key in images}
    every |= {"s3://photos/set/broken.jpg", "s3://photos/set/secret/hidden.jpg"}
    assert seen[0] | seen[1] == every
    written = set(_keys(client, "cams", "sharded/"))
    assert written == {f"sharded/photos/{k}.cam.{s}" for k in images for s in ("json", "png")}
