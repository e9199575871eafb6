"""Is reading from object storage as fast as reading from disk? Measured side by side, one run.

    .venv/bin/python benchmarks/bench_storage.py              # 128 images
    .venv/bin/python benchmarks/bench_storage.py --images 256

The same JPEGs (0.3 megapixels, photo-like) are explained three ways with the same warm
:class:`camcli.api.Explainer`, a small random-weight model (``mobilenet_v1_0.25_128``,
``weights=None``: 0.5 M parameters, so the model is fast and the I/O matters):

- disk: inputs in a local folder, outputs to a local folder (the reference rate);
- s3: inputs from an S3 server on loopback (moto's ``moto_server``, its own process) through
  s3fs, outputs to a local folder; and "s3 → s3", outputs put to another prefix of that server
  too (moto, a Python server, then shares the two cores with camcli: a pessimistic figure);
- http: inputs from an HTTP server on loopback (its own process) that waits 50 ms before every
  response, as a distant store does, outputs to a local folder.

Each way is run twice, interleaved, and the better run kept. The goal: s3 and http each at
least 0.8 × the disk rate (URL inputs are fetched by 32 threads ahead of the model).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

LATENCY = 0.05  # seconds the slow HTTP server waits before each response
MODEL = {"model": "mobilenet_v1_0.25_128", "weights": "none"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _images(count: int, folder: Path) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    made = {}
    for i in range(count):
        base = rng.integers(0, 256, (3, 4, 3)).astype(np.uint8)  # smooth, photo-like colours
        picture = Image.fromarray(base).resize((640, 480), Image.Resampling.BICUBIC)
        noise = rng.integers(-12, 13, (480, 640, 3))
        pixels = np.clip(np.asarray(picture, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
        made[f"img{i:04d}.jpg"] = buffer.getvalue()
        (folder / f"img{i:04d}.jpg").write_bytes(made[f"img{i:04d}.jpg"])
    return made


def serve_slowly(folder: str, port: int) -> None:
    """An HTTP server for ``folder`` that waits :data:`LATENCY` before every response."""

    class Slow(http.server.SimpleHTTPRequestHandler):
        def send_head(self):
            time.sleep(LATENCY)
            return super().send_head()

        def log_message(self, *args):
            pass

    handler = functools.partial(Slow, directory=folder)
    http.server.ThreadingHTTPServer(("127.0.0.1", port), handler).serve_forever()


def _wait_for(port: int, process: subprocess.Popen) -> None:
    for _ in range(300):
        if process.poll() is not None:
            raise RuntimeError(f"server on port {port} exited")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not start")


def _rate(explainer, inputs: list[str], out_dir, storage_options=None) -> float:
    from camcli.api import OutputOptions
    from camcli.storage import NO_OPTIONS

    options = OutputOptions(out_dir=out_dir, storage_options=storage_options or NO_OPTIONS)
    start = time.perf_counter()
    results = list(explainer.run(inputs, options))
    seconds = time.perf_counter() - start
    failed = [r for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} inputs failed, e.g. {failed[0].path}: {failed[0].error}")
    return len(results) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    args = parser.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret",
                      AWS_DEFAULT_REGION="us-east-1", NO_PROXY="127.0.0.1,localhost")
    work = Path(tempfile.mkdtemp(prefix="camcli-bench-storage-"))
    (work / "in").mkdir()
    made = _images(args.images, work / "in")
    s3_port, http_port = _free_port(), _free_port()
    servers = [
        subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1",
                          "-p", str(s3_port)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, __file__, "--serve", str(work / "in"), str(http_port)]),
    ]
    try:
        for port, process in zip((s3_port, http_port), servers, strict=True):
            _wait_for(port, process)
        os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{s3_port}"
        import fsspec

        s3 = fsspec.filesystem("s3")
        s3.mkdir("bench")
        s3.pipe({f"bench/in/{name}": data for name, data in made.items()})

        from camcli.api import Explainer

        explainer = Explainer(**MODEL, batch_size=16)
        ways = {
            "disk": ([str(work / "in")], lambda run: str(work / f"out-{run}")),
            "s3": (["s3://bench/in/"], lambda run: str(work / f"out-s3-{run}")),
            "s3 → s3": (["s3://bench/in/"], lambda run: f"s3://bench/out-{run}/"),
            "http": ([f"http://127.0.0.1:{http_port}/{name}" for name in made],
                     lambda run: str(work / f"out-http-{run}")),
        }
        _rate(explainer, [str(work / "in" / "img0000.jpg")] * 1, str(work / "warm"))
        rates = {way: 0.0 for way in ways}
        for run in range(2):
            for way, (inputs, out) in ways.items():
                rates[way] = max(rates[way], _rate(explainer, inputs, out(run)))
    finally:
        for process in servers:
            process.terminate()
            process.wait()
    print(f"{args.images} JPEGs 640x480, {MODEL['model']} with random weights, batch 16, "
          f"{os.cpu_count()} cores")
    print(f"{'inputs':<34} {'images/s':>9} {'× disk':>8}")
    labels = {"disk": "local disk", "s3": "S3 server on loopback (s3fs)",
              "s3 → s3": "S3, outputs put to S3 too",
              "http": f"HTTP, +{LATENCY * 1000:.0f} ms per request"}
    for way, rate in rates.items():
        print(f"{labels[way]:<34} {rate:>9.1f} {rate / rates['disk']:>8.2f}")
    for way in ("s3", "http"):
        verdict = "met" if rates[way] >= 0.8 * rates["disk"] else "NOT met"
        print(f"goal {way} >= 0.8 x disk: {verdict} ({rates[way] / rates['disk']:.2f})")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve_slowly(sys.argv[2], int(sys.argv[3]))
    else:
        main()
