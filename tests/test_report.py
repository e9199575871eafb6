"""The run report: ``camcli explain --report`` and ``camcli report``, end to end and in parts.

The model is built here so every number is known: a 1×1 convolution copies the red, green and
blue channels into three feature maps (``features``, the explained layer, ReLU), global average
pooling and a dense layer with weights ``K·I`` give class *c* the logit ``K · mean(channel c)``.
A coloured square on black is classified as its colour with a probability that grows with the
square, its Grad-CAM lights the square, and an all-black image has all-zero activations: equal
logits (top-1 "red" at 1/3, ties to the lower index) and an empty map. One input is not an
image, so the run has a failure.

The page is opened in headless Chromium through the DevTools protocol (tests/browser.py): no
console error, tiles and charts equal to what the records say, the controls change the cards,
thumbnails load. The screenshot of that run is kept at ``test-artifacts/report.png`` (ignored by
git) for a reviewer to open.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from browser import Browser
from cli_helpers import CAMCLI, nonblank_lines, offline_env
from PIL import Image

from camcli.errors import UsageError
from camcli.report import build_report, summary
from camcli.report.page import json_script

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
LABELS = ("red", "green", "blue")
K = 0.04
#: input name -> (colour index or None for black, square side, image size)
PHOTOS = {
    "red_big.png": (0, 30, (48, 40)),
    "red_small.png": (0, 9, (40, 40)),
    "green_mid.png": (1, 18, (44, 36)),
    "blue_big.png": (2, 28, (40, 48)),
    "more/green_big.png": (1, 26, (36, 36)),
    "more/blue_small.png": (2, 8, (40, 32)),
    "black.png": (None, 0, (32, 32)),
}
BROKEN = "broken.jpg"


# --------------------------------------------------------------------------- the world


def _colour_model(path: Path) -> Path:
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(3, 1, use_bias=False, activation="relu", name="features")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, name="logits")(x)
    model = keras.Model(inputs, outputs, name="colours")
    model.get_layer("features").set_weights([np.eye(3, dtype=np.float32).reshape(1, 1, 3, 3)])
    model.get_layer("logits").set_weights([K * np.eye(3, dtype=np.float32),
                                           np.zeros(3, np.float32)])
    model.save(path)
    return path


def _photo(path: Path, colour, side: int, size) -> None:
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    if colour is not None:
        pixels[2:2 + side, 3:3 + side, colour] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _run_all(runs: list[list[str]], cwd: Path) -> list[subprocess.CompletedProcess]:
    """Start several ``camcli`` commands at once (each start-up costs seconds); wait for all."""
    started = [subprocess.Popen([str(CAMCLI), *args], cwd=cwd, env=offline_env(cwd), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for args in runs]
    done = []
    for args, process in zip(runs, started, strict=True):
        out, err = process.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(args, process.returncode, out, err))
    return done


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One unsharded run with ``--report`` and the same inputs split over two shards' runs."""
    folder = tmp_path_factory.mktemp("report")
    for name, (colour, side, size) in PHOTOS.items():
        _photo(folder / "photos" / name, colour, side, size)
    (folder / "photos" / BROKEN).write_bytes(b"not a jpeg at all")
    model = _colour_model(folder / "colours.keras")
    (folder / "labels.txt").write_text("\n".join(LABELS) + "\n")
    common = ["--model", str(model), "--labels", "labels.txt", "--quiet"]
    inputs = sorted([f"photos/{name}" for name in PHOTOS] + [f"photos/{BROKEN}"])
    full, shard1, shard2 = _run_all([
        ["explain", "photos", "-r", "-o", "out", "--report", "run-report", *common],
        ["explain", *inputs[0::2], "-o", "shard1", *common],
        ["explain", *inputs[1::2], "-o", "shard2", *common],
    ], cwd=folder)
    for run in (full, shard1, shard2):
        assert CAMCLI.exists()
        assert "Traceback" not in run.stderr, run.stderr
    assert full.returncode == 1, full.stderr  # the broken input
    assert nonblank_lines(full.stderr) == [
        f"photos/{BROKEN}: not an image file Pillow can read"], full.stderr
    records = {}
    for path in sorted((folder / "out").rglob("*.cam.json")):
        record = json.loads(path.read_text())
        records[record["input"]["path"]] = (path, record)
    assert sorted(records) == sorted(f"photos/{name}" for name in PHOTOS)
    return folder, records


def _page_data(index: Path) -> dict:
    html = index.read_text(encoding="utf-8")
    match = re.search(r'<script type="application/json" id="camcli-data">(.*?)</script>', html,
                      re.S)
    assert match, "the page embeds its data"
    return json.loads(match.group(1))


# --------------------------------------------------------------------------- the files


def test_run_report_files_are_small_thumbnails_beside_one_offline_page(world):
    folder, records = world
    report = folder / "run-report"
    html = (report / "index.html").read_text(encoding="utf-8")
    for forbidden in ("src=\"http", "href=\"http", "url(", "@import", "<link", "data:image"):
        assert forbidden not in html, forbidden  # nothing from a network, no inlined picture
    thumbs = sorted((report / "thumbs").iterdir())
    assert len(thumbs) == 2 * len(records)  # input and overlay of each explained input
    for thumb in thumbs:
        assert thumb.stat().st_size < 8_000, thumb
        with Image.open(thumb) as image:
            assert image.format == "JPEG" and max(image.size) <= 192
    data = _page_data(report / "index.html")
    for card in data["cards"]:
        record_path, record = records[card["name"]]
        assert data["labels"][card["label"]] == record["predictions"][0]["label"]
        overlay = report / data["dirs"][card["dir"]] / card["explained"][0]["overlay"]
        assert overlay.resolve() == (
            record_path.parent / record["explanations"][0]["overlay"]).resolve()
        picture = report / data["dirs"][card["input"][0]] / card["input"][1]
        assert picture.resolve() == (folder / card["name"]).resolve()
        assert card["thumb"] and card["cam"]
    assert data["failures"] == [{"name": f"photos/{BROKEN}",
                                 "error": "not an image file Pillow can read"}]
    # the run left its failure where `camcli report out/` finds it
    (log,) = (folder / "out" / "camcli-failures").iterdir()
    assert json.loads(log.read_text()) == {"input": f"photos/{BROKEN}",
                                           "error": "not an image file Pillow can read"}


def test_the_model_behaves_as_designed(world):
    """The fixture's premises: colours classified as such, the black image's map empty."""
    _, records = world
    for name, (colour, _, _) in PHOTOS.items():
        record = records[f"photos/{name}"][1]
        (explained,) = record["explanations"]
        assert explained["empty"] is (colour is None), name
        assert record["predictions"][0]["label"] == LABELS[colour or 0], name
    probabilities = {n: records[f"photos/{n}"][1]["predictions"][0]["probability"]
                     for n in PHOTOS}
    assert probabilities["red_small.png"] < 0.5 < probabilities["red_big.png"]


# --------------------------------------------------------------------------- in Chromium


def _visible(browser: Browser) -> list[str]:
    return browser.evaluate("[...document.querySelectorAll('#grid .card')].map(c=>c.dataset.name)")


def _set(browser: Browser, control: str, value: str) -> list[str]:
    event = "input" if control == "q" else "change"
    browser.evaluate(f"(()=>{{const e=document.getElementById({json.dumps(control)});"
                     f"e.value={json.dumps(value)};"
                     f"e.dispatchEvent(new Event('{event}'));}})()")
    return _visible(browser)


def _bars(browser: Browser, chart: str) -> list[dict]:
    return browser.evaluate(
        f"[...document.querySelectorAll('svg[data-chart=\"{chart}\"] rect.bar')]"
        ".map(r=>({label:r.dataset.label||null,count:+r.dataset.count}))")


def test_page_in_chromium_matches_the_records_and_its_controls_work(world, chromium, tmp_path):
    folder, records = world
    index = folder / "run-report" / "index.html"
    probability = {n: r["predictions"][0]["probability"] for n, (_, r) in records.items()}
    empty = sorted(n for n, (_, r) in records.items() if r["explanations"][0]["empty"])
    shares = [r["explanations"][0]["top20_energy_share"] for _, r in records.values()
              if not r["explanations"][0]["empty"]]
    broken = f"photos/{BROKEN}"
    with Browser(chromium, tmp_path / "profile", 1280, 1400) as browser:
        browser.open(index.as_uri(), "window.__camcliReady")
        tiles = browser.evaluate(
            "Object.fromEntries([...document.querySelectorAll('.tile')]"
            ".map(t=>[t.id,+t.dataset.count]))")
        assert tiles == {"tile-done": len(records), "tile-failed": 1, "tile-empty": len(empty),
                         "tile-low": sum(p < 0.5 for p in probability.values())}
        top1 = Counter(r["predictions"][0]["label"] for _, r in records.values())
        assert sorted((b["label"], b["count"]) for b in _bars(browser, "classes")) == sorted(
            top1.items())
        expected_probability, _ = np.histogram(list(probability.values()), 20, (0.0, 1.0))
        assert [b["count"] for b in _bars(browser, "probability")] == expected_probability.tolist()
        expected_sharpness, _ = np.histogram(shares, 16, (0.2, 1.0))
        assert [b["count"] for b in _bars(browser, "sharpness")] == expected_sharpness.tolist()

        everything = sorted([*records, broken])
        assert _visible(browser) == everything  # default: by name
        by_probability = sorted(records, key=lambda n: (probability[n], n)) + [broken]
        assert _set(browser, "sort", "prob-asc") == by_probability
        _set(browser, "sort", "prob-desc")
        assert _set(browser, "show", "empty") == empty
        assert _set(browser, "show", "failed") == [broken]
        reason = browser.evaluate("document.querySelector('#grid .reason').textContent")
        assert reason == "not an image file Pillow can read"
        descending = sorted(records, key=lambda n: (-probability[n], n))
        assert _set(browser, "show", "low") == [n for n in descending if probability[n] < 0.5]
        assert _set(browser, "show", "all") == [*descending, broken]
        greens = [n for n in everything if n in records
                  and records[n][1]["predictions"][0]["label"] == "green"]
        _set(browser, "sort", "name")
        assert _set(browser, "cls", "green") == greens
        _set(browser, "cls", "")
        assert _set(browser, "q", "MORE/") == [n for n in everything if "/more/" in n]
        assert browser.evaluate("location.hash") == "#q=MORE%2F"
        _set(browser, "q", "")

        # every thumbnail of the visible cards loads; a click on an overlay opens the full one
        loaded = browser.evaluate("""Promise.all([...document.querySelectorAll('#grid img')]
          .map(i=>{i.scrollIntoView();return i.decode().then(()=>[i.alt,i.naturalWidth])
          .catch(()=>[i.alt,0]);}))""")
        assert len(loaded) == 2 * len(records) and all(width > 0 for _, width in loaded), loaded
        links = browser.evaluate("[...document.querySelectorAll('#grid a[title^=\"full\"]')]"
                                 ".map(a=>[a.closest('.card').dataset.name,a.href])")
        for name, href in links:
            record_path, record = records[name]
            assert href == (record_path.parent / record["explanations"][0]["overlay"]).as_uri()
        assert len(links) == len(records)
        browser.evaluate("window.scrollTo(0,0)")
        ARTIFACTS.mkdir(exist_ok=True)
        browser.screenshot(ARTIFACTS / "report.png", full_page=True)
        assert browser.errors == []
    with Image.open(ARTIFACTS / "report.png") as shot:
        assert np.asarray(shot.convert("L"), dtype=np.float32).std() > 20, "a blank page"


# --------------------------------------------------------------------------- shards


def _comparable(data: dict, roots: dict[str, str]) -> dict:
    """The page's data without its build time and with links made independent of which output
    folder (``roots``: folder -> placeholder) holds a record."""
    dirs = data["dirs"]
    cards = [{**card, "dir": dirs[card["dir"]],
              "input": dirs[card["input"][0]] + card["input"][1]} for card in data["cards"]]
    kept = {k: v for k, v in data.items() if k not in ("created", "title", "dirs", "cards")}
    text = json.dumps({**kept, "cards": cards})
    for folder, placeholder in roots.items():
        text = text.replace(f'"../{folder}/', f'"../{placeholder}/')
    return json.loads(text)


def test_report_over_two_shards_equals_the_report_of_one_run(world):
    folder, _ = world
    merged, again, alone = _run_all([
        ["report", "shard1", "shard2", "-o", "merged"],
        ["report", "shard2", "shard1", "shard1/photos", "-o", "again"],  # order, overlap
        ["report", "out", "-o", "alone"],
    ], cwd=folder)
    for run in (merged, again, alone):
        assert run.returncode == 0, run.stderr
        (line,) = nonblank_lines(run.stderr)
        assert line.startswith(f"camcli: report of {len(PHOTOS)} inputs (1 failed, 1 empty maps)")
    roots = {"out": "OUT", "shard1": "OUT", "shard2": "OUT"}
    single = _comparable(_page_data(folder / "run-report" / "index.html"), roots)
    assert single["counts"] == {"done": len(PHOTOS), "failed": 1, "empty": 1,
                                "low_confidence": single["counts"]["low_confidence"]}
    for name in ("merged", "again", "alone"):
        assert _comparable(_page_data(folder / name / "index.html"), roots) == single, name
    thumbs = {p.name: p.read_bytes() for p in (folder / "run-report" / "thumbs").iterdir()}
    assert {p.name: p.read_bytes() for p in (folder / "merged" / "thumbs").iterdir()} == thumbs


def test_report_command_errors(world):
    folder, _ = world
    (folder / "junk").mkdir(exist_ok=True)
    (folder / "junk" / "x.png.cam.json").write_text("{not json")
    (folder / "junk" / "y.png.cam.json").write_text('{"input": {"path": "y.png"}}')
    junk, url, missing = _run_all([
        ["report", "junk", "shard1", "-o", "junk-report"],
        ["report", "s3://bucket/run/", "-o", "nowhere"],
        ["report", "no-such-folder", "-o", "nowhere"],
    ], cwd=folder)
    assert junk.returncode == 1
    lines = nonblank_lines(junk.stderr)
    assert lines[0].startswith("camcli: junk/x.png.cam.json: not JSON: ")
    assert lines[1].startswith("camcli: junk/y.png.cam.json: not a camcli record (KeyError")
    assert lines[2].startswith("camcli: report of ")
    assert (folder / "junk-report" / "index.html").is_file()
    for run, message in ((url, "s3://bucket/run/: camcli report reads local folders only"),
                         (missing, "no-such-folder: no such file or folder")):
        assert run.returncode == 2, run.stderr
        (line,) = nonblank_lines(run.stderr)
        assert line.startswith(f"camcli: error: {message}")
    assert not (folder / "nowhere").exists()


# --------------------------------------------------------------------------- pure parts


def _record(name: str, probs: list[float], share: float | None, labels=("cat", "dog", "fox")):
    return {
        "input": {"path": name, "width": 10, "height": 8, "sha256": "0"},
        "predictions": [{"rank": i + 1, "index": i, "label": labels[i], "wnid": None,
                         "probability": p} for i, p in enumerate(probs)],
        "explanations": [{"index": 0, "label": labels[0], "probability": probs[0],
                          "empty": share is None, "overlay": f"{Path(name).name}.cam.png",
                          "top20_energy_share": 0.0 if share is None else share}],
        "model": {"name": "m"}, "method": "gradcam",
    }


def test_summarise_keeps_what_a_card_shows():
    card = summary.summarise(_record("a/b.png", [0.61234, 0.3, 0.08766], 0.456789))
    assert card["name"] == "a/b.png" and card["label"] == "cat"
    assert card["prob"] == 0.6123 and card["share"] == 0.4568 and card["empty"] is False
    assert card["top"] == [["cat", 0.6123], ["dog", 0.3], ["fox", 0.0877]]
    assert card["id"] == summary.card_id("a/b.png") != summary.card_id("a/c.png")
    empty = summary.summarise(_record("e.png", [0.9, 0.1], None))
    assert empty["empty"] is True and empty["share"] is None  # an empty map has no sharpness
    with pytest.raises(summary.RecordError, match="not a camcli record"):
        summary.summarise({"input": {"path": "x"}, "predictions": "nope"})


def test_histogram_bins_as_numpy_does():
    rng = np.random.default_rng(3)
    values = [*rng.random(500).tolist(), 0.0, 1.0, 0.5, 0.05, 0.95]
    got = summary.histogram(values, 0.0, 1.0, 20)
    expected, edges = np.histogram(values, 20, (0.0, 1.0))
    assert got["counts"] == expected.tolist()
    assert np.allclose(got["edges"], edges)
    shares = (0.2 + 0.8 * rng.random(300)).tolist()
    assert summary.histogram(shares, 0.2, 1.0, 16)["counts"] == np.histogram(
        shares, 16, (0.2, 1.0))[0].tolist()
    assert summary.histogram([None, -1.0, 2.0], 0.0, 1.0, 4)["counts"] == [1, 0, 0, 1]


def test_class_counts_and_page_counts():
    bars = summary.class_counts(["b", "a", "b", "c", "a", "d", "b"], keep=2)
    assert bars == [{"label": "b", "count": 3}, {"label": "a", "count": 2},
                    {"label": "2 other classes", "count": 2, "other": True}]
    cards = [summary.summarise(_record(f"{i}.png", [p, 1 - p], s))
             for i, (p, s) in enumerate([(0.9, 0.5), (0.3, None), (0.45, 0.8)])]
    data = summary.page_data(cards[::-1], [{"name": "z.png", "error": "bad"}], "t", "now")
    assert data["counts"] == {"done": 3, "failed": 1, "empty": 1, "low_confidence": 2}
    assert [c["name"] for c in data["cards"]] == ["0.png", "1.png", "2.png"]
    assert sum(data["charts"]["sharpness"]["counts"]) == 2  # empty maps left out


def test_json_script_cannot_be_closed_by_a_file_name():
    name = "</script><b>&<!--<script>\u2028.png"
    element = json_script("d", {"name": name})
    assert element.count("</script>") == 1 and element.count("<script") == 1
    assert "<!--" not in element  # no script-data escape state either
    inner = element.split(">", 1)[1].rsplit("</script>", 1)[0]
    assert json.loads(inner) == {"name": name}


def _write_run(folder: Path, names: list[str], probability: float, inputs: bool = False,
               labels=("cat", "dog", "fox")) -> None:
    """Records and overlays as a run leaves them; with ``inputs``, the inputs beside them too
    (grey pictures; their sha256 in the records)."""
    for name in names:
        record = _record(name, [probability, 1 - probability], 0.5, labels)
        path = folder / f"{name}.cam.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        if inputs:
            Image.new("RGB", (10, 8), (90, 90, 90)).save(folder / name)
            record["input"]["sha256"] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        path.write_text(json.dumps(record))
        Image.new("RGB", (10, 8), (200, 30, 30)).save(folder / f"{name}.cam.png")


def test_build_report_reads_each_record_once_and_keeps_one_copy_of_an_input(tmp_path,
                                                                           monkeypatch):
    _write_run(tmp_path / "first", ["a.png", "sub/b.png"], 0.9)
    _write_run(tmp_path / "second", ["a.png", "c.png"], 0.2)  # a.png again, other numbers
    log = tmp_path / "second" / "camcli-failures" / "20260101T000000.000000Z-1.jsonl"
    log.parent.mkdir()
    log.write_text('{"input": "c.png", "error": "superseded by its record"}\n'
                   '{"input": "d.png", "error": "truncated"}\nnot json\n')
    from camcli.report import sources

    reads = Counter()
    original = sources.LocalSource.read

    def counting(self, path):
        reads[path] += 1
        return original(self, path)

    monkeypatch.setattr(sources.LocalSource, "read", counting)
    built = build_report([tmp_path / "first", tmp_path / "second"], tmp_path / "report")
    records = [p for p in reads if p.name.endswith(".cam.json")]
    assert len(records) == 4 and set(reads[p] for p in records) == {1}
    assert built.records_read == 4 and built.problems == []
    cards = {c["name"]: c for c in built.data["cards"]}
    assert sorted(cards) == ["a.png", "c.png", "sub/b.png"]
    assert cards["a.png"]["prob"] == 0.9  # the copy in the first folder given
    assert built.data["failures"] == [{"name": "d.png", "error": "truncated"}]
    again = build_report([tmp_path / "second", tmp_path / "first"], tmp_path / "report2")
    assert {c["name"]: c["prob"] for c in again.data["cards"]}["a.png"] == 0.2


# --------------------------------------------------------------------------- trusting records
# A record is a file anyone who writes into the folders may have edited: it must not make the
# report copy another file's picture, stop the report, or write through a link.

PRIVATE = (0, 255, 0)  # no picture of these runs is green: a green thumbnail is a leak


def _edit(path: Path, change) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def _green_thumbnails(report: Path) -> list[str]:
    green = []
    for thumb in (report / "thumbs").iterdir():
        with Image.open(thumb) as image:
            red, grn, blue = np.asarray(image.convert("RGB"), np.float32).mean(axis=(0, 1))
        if grn > 150 and red < 100 and blue < 100:
            green.append(thumb.name)
    return green


def test_an_edited_record_cannot_make_the_report_read_a_private_file(tmp_path):
    run = tmp_path / "run"
    _write_run(run, ["a.png", "b.png", "c.png", "d.png"], 0.9, inputs=True)
    secret = tmp_path / "home" / ".ssh" / "secret.png"
    secret.parent.mkdir(parents=True)
    Image.new("RGB", (10, 8), PRIVATE).save(secret)
    (run / "a.png").unlink()  # a's input is gone; its record now names the private file
    _edit(run / "a.png.cam.json", lambda r: r["input"].update(path=str(secret)))
    _edit(run / "b.png.cam.json",
          lambda r: r["explanations"][0].update(overlay="../home/.ssh/secret.png"))
    (run / "c.png.cam.png").unlink()
    (run / "c.png.cam.png").symlink_to(secret)  # c's overlay beside it is a link
    built = build_report([run], tmp_path / "report")
    assert built.problems == [
        f"{run / 'b.png.cam.json'}: explanations[0].overlay '../home/.ssh/secret.png' is not "
        "an output file of this record beside it"]
    cards = {c["name"]: c for c in built.data["cards"]}
    assert sorted(cards) == sorted([str(secret), "c.png", "d.png"])  # the rest is built
    assert _green_thumbnails(tmp_path / "report") == []
    edited = cards[str(secret)]
    assert not edited["thumb"] and edited["input"] is None
    assert edited["note"] == "input changed since the run (its sha256 differs): not shown"
    assert not cards["c.png"]["cam"] and cards["c.png"]["explained"][0]["overlay"] is None
    assert cards["d.png"]["thumb"] and cards["d.png"]["cam"]  # an untouched record: both


def test_a_bad_number_is_a_bad_record_and_the_rest_is_reported(tmp_path):
    run = tmp_path / "run"
    _write_run(run, ["ok.png", "nan.png", "text.png", "inf.png", "none.png"], 0.7)
    _edit(run / "nan.png.cam.json", lambda r: r["predictions"][0].update(probability=math.nan))
    _edit(run / "text.png.cam.json", lambda r: r["predictions"][1].update(probability="0.3"))
    _edit(run / "inf.png.cam.json",
          lambda r: r["explanations"][0].update(top20_energy_share=math.inf))
    _edit(run / "none.png.cam.json", lambda r: r["predictions"][0].update(probability=None))
    (report,) = _run_all([["report", "run", "-o", "report"]], cwd=tmp_path)
    assert report.returncode == 1, report.stderr
    assert sorted(nonblank_lines(report.stderr)[:-1]) == [
        "camcli: run/inf.png.cam.json: explanations[0].top20_energy_share is Infinity, "
        "not a number in [0, 1]",
        "camcli: run/nan.png.cam.json: predictions[0].probability is NaN, not a number in [0, 1]",
        "camcli: run/none.png.cam.json: predictions[0].probability is null, not a number in "
        "[0, 1]",
        "camcli: run/text.png.cam.json: predictions[1].probability is \"0.3\", not a number in "
        "[0, 1]",
    ]
    assert nonblank_lines(report.stderr)[-1].startswith("camcli: report of 1 inputs")
    assert [card["name"] for card in _page_data(tmp_path / "report" / "index.html")["cards"]] == [
        "ok.png"]


def test_records_that_are_fifos_or_devices_are_bad_records_not_a_hang(tmp_path):
    import os

    run = tmp_path / "run"
    _write_run(run, ["ok.png"], 0.9)
    os.mkfifo(run / "fifo.png.cam.json")  # no writer: opening it for reading would block
    (run / "zero.png.cam.json").symlink_to("/dev/zero")  # endless
    (run / "camcli-failures").mkdir()
    os.mkfifo(run / "camcli-failures" / "20260101T000000.000000Z-1.jsonl")
    report = subprocess.run([str(CAMCLI), "report", "run", "-o", "report"], cwd=tmp_path,
                            env=offline_env(tmp_path), text=True, capture_output=True,
                            timeout=60)
    assert report.returncode == 1, report.stderr
    assert nonblank_lines(report.stderr)[:-1] == [
        "camcli: run/fifo.png.cam.json: cannot read record: not a regular file",
        "camcli: run/zero.png.cam.json: cannot read record: not a regular file",
        "camcli: run/camcli-failures/20260101T000000.000000Z-1.jsonl: cannot read failure log: "
        "not a regular file"]
    assert [c["name"] for c in _page_data(tmp_path / "report" / "index.html")["cards"]] == [
        "ok.png"]


def test_a_symlinked_report_folder_is_refused_and_its_target_left_alone(tmp_path):
    _write_run(tmp_path / "run", ["a.png"], 0.9)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "0123456789abcdef.jpg").write_bytes(b"precious")  # named like a stale thumbnail
    (victim / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in victim.iterdir()}
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "thumbs").symlink_to(victim)
    (tmp_path / "linked").symlink_to(victim)
    with pytest.raises(UsageError, match=r"report/thumbs: is a symbolic link; camcli report "
                                         r"writes only into a real folder"):
        build_report([tmp_path / "run"], tmp_path / "report")
    thumbs, linked = _run_all([["report", "run", "-o", "report"],
                               ["report", "run", "-o", "linked"]], cwd=tmp_path)
    for run, shown in ((thumbs, "report/thumbs"), (linked, "linked")):
        assert run.returncode == 2, run.stderr
        assert nonblank_lines(run.stderr) == [
            f"camcli: error: {shown}: is a symbolic link; camcli report writes only into a real "
            "folder (remove the link, or give the folder it points to)"]
    assert {p.name: p.read_bytes() for p in victim.iterdir()} == before
    assert not (tmp_path / "report" / "index.html").exists()


# --------------------------------------------------------------------------- input thumbnails


def test_report_from_another_folder_finds_inputs_beside_the_out_dir(world, tmp_path,
                                                                    monkeypatch):
    """``-o out`` in FOLDER: a record ``out/photos/a.png.cam.json`` names ``photos/a.png``,
    relative to FOLDER, which holds ``out``; the current folder is another one."""
    folder, records = world
    monkeypatch.chdir(tmp_path)
    built = build_report([folder / "out"], tmp_path / "report")
    assert len(built.data["cards"]) == len(records)
    assert all(card["thumb"] and card["input"] for card in built.data["cards"])
    made = {p.name: p.read_bytes() for p in (tmp_path / "report" / "thumbs").iterdir()}
    assert made == {p.name: p.read_bytes() for p in (folder / "run-report" / "thumbs").iterdir()}


CHANGED = {  # input -> the note its card shows once the input was changed or moved
    "photos/red_big.png": "input changed since the run (its sha256 differs): not shown",
    "photos/blue_big.png": "input changed since the run (another pixel size): not shown",
    "photos/green_mid.png": "input not found",
}


@pytest.fixture()
def changed_inputs(world, tmp_path, monkeypatch):
    """A copy of the world's run whose report was built, then three inputs changed or moved,
    and the report built again."""
    folder, _ = world
    for name in ("photos", "out"):
        shutil.copytree(folder / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    first = build_report(["out"], "report")
    assert all(card["thumb"] for card in first.data["cards"])
    _photo(tmp_path / "photos" / "red_big.png", 2, 30, (48, 40))  # same size, now blue
    _photo(tmp_path / "photos" / "blue_big.png", 2, 28, (20, 20))  # another size
    (tmp_path / "photos" / "green_mid.png").rename(tmp_path / "elsewhere.png")  # moved away
    return tmp_path, build_report(["out"], "report")


def test_a_changed_or_moved_input_gets_no_thumbnail_but_a_note(changed_inputs):
    folder, built = changed_inputs
    cards = {card["name"]: card for card in built.data["cards"]}
    for name, card in cards.items():
        thumb = folder / "report" / "thumbs" / f"{card['id']}.jpg"
        if name in CHANGED:
            assert card["note"] == CHANGED[name], name
            assert not card["thumb"] and card["input"] is None, name
            assert not thumb.exists(), name  # the earlier build's thumbnail is gone
            assert card["cam"], name  # the overlay is still the run's
        else:
            assert card["thumb"] and thumb.is_file() and "note" not in card, name


HOSTILE = "<img src=x onerror=window.__pwned=1>`<!--</script>.png"
HOSTILE_LABELS = ("<u>bold</u>", "</script><!--", "a&amp;b")


def test_notes_and_hostile_names_on_the_page_in_chromium(changed_inputs, chromium, tmp_path):
    folder, _ = changed_inputs
    _write_run(tmp_path / "hostile", [HOSTILE, "plain.png"], 0.9, labels=HOSTILE_LABELS)
    log = tmp_path / "hostile" / "camcli-failures" / "20260101T000000.000000Z-1.jsonl"
    log.parent.mkdir()
    log.write_text(json.dumps({"input": "<s>x</s>.png", "error": "<script>oops</script>"}))
    hostile = build_report([tmp_path / "hostile"], tmp_path / "hostile-report",
                           title="<marquee>title</marquee>")
    assert hostile.problems == []
    with Browser(chromium, tmp_path / "profile", 1280, 1400) as browser:
        browser.open((folder / "report" / "index.html").as_uri(), "window.__camcliReady")
        notes = browser.evaluate("""Object.fromEntries([...document.querySelectorAll('#grid .card')]
          .map(c=>[c.dataset.name,c.querySelector('.pics .none.input')])
          .filter(([,n])=>n).map(([name,n])=>[name,[n.textContent,n.offsetHeight>0]]))""")
        assert notes == {name: [note, True] for name, note in CHANGED.items()}

        browser.open(hostile.index.as_uri(), "window.__camcliReady")
        assert browser.evaluate("window.__pwned===undefined")
        assert browser.evaluate(
            "document.querySelectorAll('u, s, marquee, img[src=\"x\"]').length") == 0
        assert browser.evaluate("document.title") == "<marquee>title</marquee>"
        assert browser.evaluate("document.querySelector('h1').textContent") == (
            "<marquee>title</marquee>")
        assert _visible(browser) == sorted([HOSTILE, "<s>x</s>.png", "plain.png"])
        assert browser.evaluate(
            "[...document.querySelectorAll('#cls option')].map(o=>o.textContent)"
        ) == ["all classes", HOSTILE_LABELS[0]]
        assert browser.evaluate("document.querySelector('#grid .reason').textContent") == (
            "<script>oops</script>")
        labels = browser.evaluate("[...document.querySelectorAll('#grid ol.top li span')]"
                                  ".map(s=>s.textContent)")
        assert labels[:4] == [HOSTILE_LABELS[0], "90.0 %", HOSTILE_LABELS[1], "10.0 %"]
        assert browser.errors == []
