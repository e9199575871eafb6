"""Tests for camcli.labels: the shipped ImageNet table, class resolution and label files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import offline_env

from camcli.errors import UnknownNameError, UsageError
from camcli.labels import Labels, generic_labels, imagenet_labels, load_label_file


def test_shipped_table_is_keras_class_index(tmp_path):
    """Keras' own ``decode_predictions`` takes the table, serialized as Keras' JSON file, for its
    class index: the md5 it checks passes (else it would try a download, which fails here), so
    all 1000 (wnid, label) entries are Keras' own."""
    labels = imagenet_labels()
    assert len(labels) == 1000
    index = {str(i): [labels.wnid(i), labels.name(i)] for i in range(len(labels))}
    env = offline_env(tmp_path)
    cache = Path(env["KERAS_HOME"]) / "models"
    cache.mkdir(parents=True)
    (cache / "imagenet_class_index.json").write_text(json.dumps(index), encoding="utf-8")
    script = (
        "import json, numpy, keras\n"
        "scores = numpy.eye(1000)[[207, 281, 504, 967]]\n"
        "decoded = keras.applications.imagenet_utils.decode_predictions(scores, top=1)\n"
        "print(json.dumps([list(row[0][:2]) for row in decoded]))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Downloading" not in run.stdout + run.stderr
    assert json.loads(run.stdout.splitlines()[-1]) == [
        ["n02099601", "golden_retriever"],
        ["n02123045", "tabby"],
        ["n03063599", "coffee_mug"],
        ["n07920052", "espresso"],
    ]


def test_imagenet_labels_is_cached():
    assert imagenet_labels() is imagenet_labels()


@pytest.mark.parametrize(
    ("index", "wnid", "name"),
    [
        (207, "n02099601", "golden_retriever"),
        (281, "n02123045", "tabby"),
        (504, "n03063599", "coffee_mug"),
        (967, "n07920052", "espresso"),
    ],
)
def test_resolve_by_index_wnid_and_name(index, wnid, name):
    labels = imagenet_labels()
    assert labels.name(index) == name
    assert labels.wnid(index) == wnid
    spaced = name.replace("_", " ")
    for spec in (index, str(index), wnid, wnid.upper(), name, spaced, spaced.title()):
        assert labels.resolve(spec) == index, spec


def test_resolve_treats_dashes_spaces_and_underscores_alike():
    labels = imagenet_labels()
    sloth = labels.resolve("three-toed_sloth")
    assert labels.name(sloth) == "three-toed_sloth"
    assert labels.resolve("Three Toed Sloth") == sloth
    assert labels.resolve("  golden retriever ") == 207
    assert labels.name(labels.resolve("jack o lantern")) == "jack-o'-lantern"


def test_unknown_name_suggests_close_matches():
    with pytest.raises(UnknownNameError) as info:
        imagenet_labels().resolve("golden retreiver")
    err = info.value
    assert err.kind == "class" and err.name == "golden retreiver"
    assert "golden_retriever" in err.suggestions and len(err.suggestions) <= 3
    assert "did you mean" in str(err) and "golden_retriever" in str(err)


@pytest.mark.parametrize("spec", [1000, "1000", -1, "n99999999"])
def test_out_of_range_or_unknown_spec_raises(spec):
    with pytest.raises(UnknownNameError, match="unknown class"):
        imagenet_labels().resolve(spec)


@pytest.mark.parametrize(("name", "indices"), [("crane", (134, 517)), ("Maillot", (638, 639))])
def test_ambiguous_name_lists_candidates(name, indices):
    labels = imagenet_labels()
    with pytest.raises(UsageError, match="ambiguous") as info:
        labels.resolve(name)
    message = str(info.value)
    assert not isinstance(info.value, UnknownNameError)
    assert "\n" not in message
    for i in indices:
        assert f"{i} ({labels.wnid(i)})" in message
    # The wnid still picks one of them unambiguously.
    assert labels.resolve(labels.wnid(indices[1])) == indices[1]


def test_exact_case_breaks_folded_ties():
    labels = imagenet_labels()
    assert labels.resolve("Cardigan") == 264  # Welsh corgi
    assert labels.resolve("cardigan") == 474  # sweater
    with pytest.raises(UsageError, match="ambiguous"):
        labels.resolve("CARDIGAN")


def test_every_unique_name_round_trips():
    labels = imagenet_labels()
    duplicated = {134, 517, 638, 639}
    for i in set(range(len(labels))) - duplicated:
        assert labels.resolve(labels.name(i)) == i


def test_generic_labels():
    labels = generic_labels(3)
    assert labels.names == ("class_0", "class_1", "class_2")
    assert labels.wnids is None and labels.wnid(1) is None
    assert labels.resolve("class_2") == 2 and labels.resolve("1") == 1
    with pytest.raises(UnknownNameError):
        labels.resolve(3)
    with pytest.raises(ValueError):
        generic_labels(0)


def test_label_file_text(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("cat\nhot dog\r\nbird\n\n\n", encoding="utf-8")
    labels = load_label_file(path, expected=3)
    assert labels.names == ("cat", "hot dog", "bird")
    assert labels.resolve("Hot_Dog") == 1


@pytest.mark.parametrize(
    "content",
    [
        ["cat", "dog", "bird"],
        {"0": "cat", "1": "dog", "2": "bird"},
        {"2": "bird", "0": "cat", "1": "dog"},
        {"cat": 0, "bird": 2, "dog": 1},
    ],
)
def test_label_file_json(tmp_path, content):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    labels = load_label_file(path)
    assert labels.names == ("cat", "dog", "bird")
    assert labels.wnids is None


def test_label_file_keras_index_format(tmp_path):
    path = tmp_path / "index.json"
    path.write_text(json.dumps({"0": ["n01440764", "tench"], "1": ["n01443537", "goldfish"]}))
    labels = load_label_file(path)
    assert labels.names == ("tench", "goldfish")
    assert labels.resolve("n01443537") == 1


def test_label_file_count_mismatch(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("cat\ndog\n", encoding="utf-8")
    with pytest.raises(UsageError) as info:
        load_label_file(path, expected=1000)
    assert str(info.value) == f"labels file {path} has 2 labels but the model has 1000 outputs"


@pytest.mark.parametrize(
    ("filename", "content", "reason"),
    [
        ("bad.json", '["cat", "dog"', "not valid JSON"),
        ("bad.json", '{"0": "cat", "2": "dog"}', "missing 1"),
        ("bad.json", "[1, 2]", "non-empty strings"),
        ("bad.json", '"cat"', "expected a JSON list or object"),
        ("gap.txt", "cat\n\ndog\n", "line 2 is blank"),
        ("empty.txt", "\n\n", "no labels"),
        ("binary.txt", b"\xff\xfe\x00cat", "cannot read"),
    ],
)
def test_malformed_label_file(tmp_path, filename, content, reason):
    path = tmp_path / filename
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(UsageError, match=reason) as info:
        load_label_file(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_label_file(tmp_path):
    path = tmp_path / "nope.txt"
    with pytest.raises(UsageError, match="cannot read labels file") as info:
        load_label_file(path)
    assert str(path) in str(info.value)


def test_labels_rejects_mismatched_wnids():
    with pytest.raises(ValueError):
        Labels(names=("a", "b"), wnids=("n1",))
