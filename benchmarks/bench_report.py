"""How the run report scales: 10,000 records, built and opened in headless Chromium.

    .venv/bin/python benchmarks/bench_report.py [--records 10000] [--keep DIR]

Writes N synthetic but valid records (the schema camcli writes: top-5 predictions over 60
classes, one explanation with its map statistics, some empty maps) with a small input JPEG and
overlay PNG beside each, as ``camcli explain`` leaves them, then measures:

- building the report (``camcli.report.build_report``) from cold (every thumbnail drawn) and
  again (thumbnails up to date), counting the opens of record files with an audit hook (each
  must be opened once per build);
- opening ``index.html`` in headless Chromium (the DevTools protocol over a pipe, see
  tests/browser.py): milliseconds from navigation start until the first cards are in the DOM
  (``window.__camcliReady``), the number of cards in the DOM (bounded), and how long a sort and a
  filter over all N take in the page. Median of 3 fresh page loads.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def make_records(folder: Path, count: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    labels = [f"class_{i:02d}" for i in range(60)]
    popularity = rng.dirichlet(np.full(60, 0.4))
    pictures = []
    for i in range(8):  # a few distinct small pictures, written under every name
        pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        pixels[:, :, i % 3] //= 3
        image = Image.fromarray(pixels)
        buffers = []
        for fmt in ("JPEG", "PNG"):
            path = folder / f".seed{i}.{fmt.lower()}"
            image.save(path, fmt)
            buffers.append(path.read_bytes())
            path.unlink()
        pictures.append(buffers)
    for n in range(count):
        sub = folder / f"batch{n // 1000:02d}"
        sub.mkdir(exist_ok=True)
        name = f"img{n:05d}.jpg"
        jpeg, png = pictures[n % len(pictures)]
        (sub / name).write_bytes(jpeg)
        (sub / f"{name}.cam.png").write_bytes(png)
        logits = rng.normal(0, 1, 60) + 4 * np.eye(60)[rng.choice(60, p=popularity)] * rng.random()
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        order = np.argsort(-probabilities)[:5]
        empty = bool(rng.random() < 0.03)
        record = {
            "schema_version": 1, "camcli_version": "bench", "versions": {},
            "input": {"path": f"{sub.name}/{name}", "width": 64, "height": 48,
                      "sha256": hashlib.sha256(jpeg).hexdigest()},
            "model": {"name": "synthetic", "weights": "none", "layer": "conv", "input_size": [
                224, 224], "preprocess": "none"},
            "method": "gradcam", "method_options": {}, "score": "logit",
            "probability": "softmax", "settings_fingerprint": "0",
            "predictions": [{"rank": r + 1, "index": int(k), "wnid": None, "label": labels[k],
                             "probability": float(probabilities[k])}
                            for r, k in enumerate(order)],
            "explanations": [{
                "index": int(order[0]), "wnid": None, "label": labels[order[0]],
                "logit": float(logits[order[0]]), "probability": float(probabilities[order[0]]),
                "empty": empty, "overlay": f"{name}.cam.png", "heatmap": None,
                "peak": {"x": 10.0, "y": 20.0}, "centroid": None if empty else {"x": 1, "y": 2},
                "top20_energy_share": 0.0 if empty else float(0.2 + 0.8 * rng.beta(2, 3)),
            }],
        }
        (sub / f"{name}.cam.json").write_text(json.dumps(record, sort_keys=True, indent=2))


def count_record_opens():
    opens: dict[str, int] = {}

    def hook(event, args):
        if event == "open" and isinstance(args[0], str) and args[0].endswith(".cam.json"):
            opens[args[0]] = opens.get(args[0], 0) + 1

    sys.addaudithook(hook)
    return opens


def time_build(source: Path, out: Path, opens: dict) -> tuple[float, dict]:
    from camcli.report import build_report

    opens.clear()
    start = time.perf_counter()
    built = build_report([source], out)
    seconds = time.perf_counter() - start
    per_record = set(opens.values())
    return seconds, {"records": built.records_read, "files opened": len(opens),
                     "opens per record": sorted(per_record), "problems": len(built.problems)}


def time_page(index: Path, runs: int = 3) -> dict:
    from browser import Browser, find_chromium

    binary = find_chromium()
    ready, wall, sort, filt, nodes = [], [], [], [], []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as profile, Browser(binary, Path(profile)) as browser:
            wall.append(browser.open(index.as_uri(), "window.__camcliReady"))
            ready.append(browser.evaluate("window.__camcliReady"))
            nodes.append(browser.evaluate("document.querySelectorAll('#grid .card').length"))
            sort.append(browser.evaluate("""(()=>{const s=document.getElementById('sort');
              const t=performance.now();s.value='prob-asc';s.dispatchEvent(new Event('change'));
              return performance.now()-t;})()"""))
            filt.append(browser.evaluate("""(()=>{const s=document.getElementById('show');
              const t=performance.now();s.value='low';s.dispatchEvent(new Event('change'));
              return performance.now()-t;})()"""))
            if browser.errors:
                raise SystemExit(f"console errors: {browser.errors[:3]}")
    return {"ready_ms": statistics.median(ready), "wall_s": statistics.median(wall),
            "sort_ms": statistics.median(sort), "filter_ms": statistics.median(filt),
            "cards_in_dom": max(nodes)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--keep", type=Path, help="build here instead of a temporary folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        folder = args.keep or Path(temporary)
        source, out = folder / "outputs", folder / "report"
        source.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        make_records(source, args.records)
        print(f"{args.records:,} records written in {time.perf_counter() - start:.1f}s")
        opens = count_record_opens()
        cold, reads = time_build(source, out, opens)
        warm, reads_again = time_build(source, out, opens)
        index = out / "index.html"
        thumbs = sorted((out / "thumbs").iterdir())
        mean_thumb = sum(p.stat().st_size for p in thumbs) / max(1, len(thumbs))
        page = time_page(index)
        print(f"build, cold (every thumbnail drawn) : {cold:6.2f} s   {reads}")
        print(f"build, again (thumbnails up to date): {warm:6.2f} s   {reads_again}")
        print(f"index.html {index.stat().st_size / 1e6:.1f} MB, {len(thumbs):,} thumbnails, "
              f"mean {mean_thumb / 1e3:.1f} kB")
        print(f"Chromium: first cards in the DOM {page['ready_ms']:.0f} ms after navigation "
              f"start (wall from the navigate command {page['wall_s']:.2f} s); "
              f"{page['cards_in_dom']} cards in the DOM of {args.records:,}")
        print(f"Chromium: sort all by probability {page['sort_ms']:.0f} ms, filter low "
              f"confidence {page['filter_ms']:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
