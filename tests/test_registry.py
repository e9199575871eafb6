"""Tests for camcli.registry.

The fast tests never build a model. The one slow test builds every model with random weights
and runs one Grad-CAM on each, in two worker processes (tests/registry_worker.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from camcli import registry
from camcli.errors import UnknownNameError

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("registry_worker.py")
ALL = registry.list_models()


def _names(specs) -> list[str]:
    return [spec.name for spec in specs]


def _unknown(name: str) -> UnknownNameError:
    with pytest.raises(UnknownNameError) as info:
        registry.get_spec(name)
    return info.value


# --- resolution -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "typed, canonical",
    [
        ("resnet50", "resnet50"),
        ("ResNet-50", "resnet50"),
        ("RESNET_50", "resnet50"),
        ("Inception-ResNet-V2", "inception_resnet_v2"),
        ("MOBILENET-V1-0.25-224", "mobilenet_v1_0.25_224"),
        ("efficientnet-v2-b0", "efficientnetv2b0"),
        ("ConvNeXt_Tiny", "convnext_tiny"),
    ],
)
def test_lookup_ignores_case_dashes_and_underscores(typed, canonical):
    assert registry.get_spec(typed).name == canonical


@pytest.mark.parametrize(
    "alias, canonical",
    [
        ("mobilenet", "mobilenet_v1_1.0_224"),
        ("MobileNet", "mobilenet_v1_1.0_224"),
        ("mobilenet_v1", "mobilenet_v1_1.0_224"),
        ("mobilenet_v2", "mobilenet_v2_1.0_224"),
        ("mobilenetv2", "mobilenet_v2_1.0_224"),
        ("MobileNetV3Small", "mobilenet_v3_small_1.0_224"),
        ("mobilenet-v3-large", "mobilenet_v3_large_1.0_224"),
        ("EfficientNetV2B0", "efficientnetv2b0"),
        ("NASNetLarge", "nasnet_large"),
    ],
)
def test_aliases(alias, canonical):
    assert registry.get_spec(alias).name == canonical


def test_every_keras_constructor_name_resolves_to_a_model_of_that_constructor():
    for spec in ALL:
        assert registry.get_spec(spec.constructor).constructor == spec.constructor


def test_names_and_aliases_are_unique_after_normalization():
    keys = [registry.normalize(name) for spec in ALL for name in (spec.name, *spec.aliases)]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    assert not duplicates


def test_canonical_names_are_lower_case_and_sorted():
    assert all(spec.name == spec.name.lower() for spec in ALL)
    assert _names(ALL) == sorted(_names(ALL))


def test_normalize_keeps_dots():
    assert registry.normalize("MobileNet_V1-0.25_224") == "mobilenetv10.25224"
    assert registry.normalize("mobilenet_v1_0.25_224") != registry.normalize("mobilenet_v1_0.5_224")


# --- unknown names --------------------------------------------------------------------------


def test_unknown_name_message_lists_suggestions():
    error = _unknown("resnet5")
    # the completion, then the sibling whose number is nearest; v2 variants collapsed
    assert error.suggestions == ["resnet50", "resnet101"]
    assert str(error) == "unknown model 'resnet5' — did you mean: resnet50, resnet101?"


def test_suggestions_without_completion_are_the_nearest_siblings():
    assert _unknown("efficientnetb9").suggestions[:3] == [
        "efficientnetb7", "efficientnetb6", "efficientnetb5"
    ]


def test_suggestions_complete_a_prefix_shortest_first():
    assert _unknown("resnet").suggestions == ["resnet50", "resnet101", "resnet152"]
    sizes = [f"mobilenet_v1_1.0_{size}" for size in (128, 160, 192, 224)]
    assert _unknown("mobilenet_v1_1.0").suggestions[:4] == sizes


@pytest.mark.parametrize(
    "typed, first",
    [
        ("resnt50", "resnet50"),  # typo
        ("densenet12", "densenet121"),  # unfinished
        ("mobilenet_v3", "mobilenet_v3_large_1.0_224"),  # ambiguous prefix: aliases first
    ],
)
def test_suggestions_start_with_the_likeliest_model(typed, first):
    assert _unknown(typed).suggestions[0] == first


def test_suggestions_for_a_size_that_does_not_exist():
    assert all(name.startswith("efficientnetb") for name in _unknown("efficientnet-b9").suggestions)


def test_suggestions_are_canonical_names():
    canonical = set(_names(ALL))
    for typed in ("mobilenet_v", "mobilenetv3", "MobileNetV2_1.0", "effnet", "vgg"):
        suggestions = _unknown(typed).suggestions
        assert suggestions and set(suggestions) <= canonical, typed


def test_unknown_name_without_close_match():
    error = _unknown("zzz")
    assert error.suggestions == []
    assert str(error) == "unknown model 'zzz'"


# --- listing --------------------------------------------------------------------------------


def test_list_models_filters_case_insensitively():
    resnets = ["resnet101", "resnet101v2", "resnet152", "resnet152v2", "resnet50", "resnet50v2"]
    assert _names(registry.list_models("resnet*")) == resnets
    assert _names(registry.list_models("RESNET*")) == resnets
    assert _names(registry.list_models("*v2")) == [
        "inception_resnet_v2",
        "resnet101v2",
        "resnet152v2",
        "resnet50v2",
    ]
    assert registry.list_models("no-such-model*") == []
    assert registry.list_models() == ALL


def test_list_models_matches_normalized_names_and_aliases():
    assert len(registry.list_models("MobileNetV1*")) == 16
    assert _names(registry.list_models("mobilenet")) == ["mobilenet_v1_1.0_224"]
    assert _names(registry.list_models("MobileNet-V2")) == ["mobilenet_v2_1.0_224"]
    assert "mobilenet_v2_1.0_224" not in _names(registry.list_models("*v2"))  # alias not globbed


def test_mobilenet_v1_grid_has_all_16_names():
    expected = {
        f"mobilenet_v1_{alpha}_{size}"
        for alpha in ("0.25", "0.5", "0.75", "1.0")
        for size in (128, 160, 192, 224)
    }
    assert set(_names(registry.list_models("mobilenet_v1_*"))) == expected
    for spec in registry.list_models("mobilenet_v1_*"):
        alpha, size = spec.name.split("_")[2:]
        assert spec.input_size == (int(size), int(size))
        assert dict(spec.options) == {"alpha": float(alpha)}


def test_mobilenet_v2_and_v3_grids():
    v2 = _names(registry.list_models("mobilenet_v2_*"))
    assert len(v2) == 4 * 5 + 2  # 1.3 and 1.4 only at 224
    assert "mobilenet_v2_1.4_224" in v2 and "mobilenet_v2_1.4_96" not in v2
    assert len(registry.list_models("mobilenet_v3_*")) == 6


def test_entry_count():
    assert len(ALL) == 80


# --- specs ----------------------------------------------------------------------------------


def test_to_dict_is_json_serializable(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # an empty Keras cache
    data = json.loads(json.dumps([spec.to_dict() for spec in ALL]))
    small = data[_names(ALL).index("mobilenet_v1_0.25_128")]
    assert small == {
        "name": "mobilenet_v1_0.25_128",
        "constructor": "MobileNet",
        "family": "mobilenet",
        "input_size": [128, 128],
        "default_layer": "conv_pw_13_relu",
        "aliases": [],
        "options": {"alpha": 0.25},
        "bundled_weights": None,  # downloaded: only mobilenet_v1_0.25_224 ships its weights
        "source": "keras.applications",
        # SOURCES.md's 224x224 model has 475,544; the input size changes no weight's shape
        "parameters": 475_544,
        "weights": "download",
    }
    bundled = data[_names(ALL).index("mobilenet_v1_0.25_224")]["bundled_weights"]
    assert bundled["file"].endswith(".weights.h5") and len(bundled["sha256"]) == 64


def test_specs_are_frozen_and_hashable():
    spec = registry.get_spec("resnet50")
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]
    assert len(set(ALL)) == len(ALL)


def test_importing_the_registry_does_not_load_keras_or_tensorflow():
    code = (
        "import sys, json\n"
        "from camcli import registry\n"
        "registry.get_spec('resnet50').to_dict()\n"
        "registry.list_models('mobilenet*')\n"
        "try:\n"
        "    registry.get_spec('resnet5')\n"
        "except Exception:\n"
        "    pass\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))\n"
        "print(json.dumps(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


def test_constructors_and_families_exist_in_keras():
    keras = pytest.importorskip("keras")
    for spec in ALL:
        assert callable(getattr(keras.applications, spec.constructor)), spec.name
        assert callable(getattr(keras.applications, spec.family).preprocess_input), spec.name


# --- every model, built -----------------------------------------------------------------------


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}


def _run_worker(names: list[str]) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, str(WORKER), *names],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    seen = {r["name"] for r in results}
    tail = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
    for name in names:  # a crash loses the models after it: report them, do not hide them
        if name not in seen:
            results.append({"name": name, "problems": [f"worker crashed: {tail[0]}"]})
    return results


@pytest.mark.slow
def test_every_model_builds_and_runs_one_gradcam():
    """Every entry, weights=None: the stored default layer is the last >1x1 feature map, and one
    Grad-CAM runs through camcli's loading and engine. Two worker processes split the registry."""
    names = _names(ALL)
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = [r for chunk in pool.map(_run_worker, [names[0::2], names[1::2]]) for r in chunk]
    assert sorted(r["name"] for r in results) == sorted(names)
    failures = [f"{r['name']}: {'; '.join(r['problems'])}" for r in results if r["problems"]]
    assert not failures, f"{len(failures)} of {len(ALL)} models failed:\n" + "\n".join(failures)


def test_models_lists_parameters_and_where_weights_come_from_without_tensorflow(tmp_path):
    """``camcli models`` (table and --json) says, for keras.applications and keras-hub rows
    alike, the family, source, input size, parameters and whether the ImageNet weights are
    bundled, cached (Keras cache under KERAS_HOME, kagglehub cache under KAGGLEHUB_CACHE) or
    would be downloaded — without importing TensorFlow or keras-hub."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from camcli import hub, hub_presets

    root = Path(__file__).resolve().parents[1]
    keras_home = tmp_path / "keras"
    (keras_home / "models").mkdir(parents=True)
    # the file keras.applications.ResNet50(weights="imagenet") downloads, already in the cache
    (keras_home / "models" / "resnet50_weights_tf_dim_ordering_tf_kernels.h5").write_bytes(b"x")
    preset = hub_presets.get("resnet_50_imagenet")
    folder = hub.cached_preset_folder(preset.handle).relative_to(hub.kagglehub_cache())
    for name in hub.PRESET_MARKERS:
        (tmp_path / "kaggle" / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / "kaggle" / folder / name).write_text("{}")
    code = ("import sys; sys.modules['keras_hub'] = None; from camcli.cli import main\n"
            "for args in (['models'], ['models', '--json']):\n"
            "    sys.argv = ['camcli', *args]\n"
            "    try:\n        main()\n    except SystemExit:\n        pass\n"
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    env = dict(os.environ, PYTHONPATH=str(root), KERAS_HOME=str(keras_home),
               KAGGLEHUB_CACHE=str(tmp_path / "kaggle"), COLUMNS="400")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=root, timeout=120, env=env)
    assert run.returncode == 0, run.stderr
    table, listing = run.stdout.split("\n[\n", 1)
    rows = {row["name"]: row for row in json.loads("[\n" + listing)}
    for row in rows.values():
        assert {"family", "source", "input_size", "parameters", "weights"} <= set(row), row
        assert row["weights"] in ("bundled", "cached", "download")
        assert row["parameters"] and row["parameters"] > 100_000, row
    assert set(rows) >= {spec.name for spec in registry.list_models()}
    # parameter counts from the Keras applications documentation's table
    assert rows["resnet50"]["parameters"] == 25_636_712
    assert rows["vgg16"]["parameters"] == 138_357_544
    assert rows["mobilenet_v2_1.0_224"]["parameters"] == 3_538_984
    assert [rows[n]["weights"] for n in ("resnet50", "resnet101", "mobilenet_v1_0.25_224")] == [
        "cached", "download", "bundled"]
    assert rows["resnet_50_imagenet"]["weights"] == "cached"
    assert rows["resnet_101_imagenet"]["weights"] == "download"
    assert rows["resnet50"]["source"] == "keras.applications"
    assert rows["resnet_50_imagenet"]["source"] == "keras-hub"
    # a depth in a preset's name is not its input size; a size in it is
    assert rows["densenet_121_imagenet"]["input_size"] is None
    assert rows["vit_base_patch16_384_imagenet"]["input_size"] == [384, 384]
    resnet50 = next(line for line in table.splitlines() if "│ resnet50 " in line)
    assert "25.6 M" in resnet50 and "cached" in resnet50
    assert "cached: already in the Keras or kagglehub cache" in table
