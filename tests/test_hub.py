"""keras-hub models and vision transformers (issue 22): loading, the token-grid adapter, the
attention methods, checked against independent implementations written here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import schema_errors

pytest.importorskip("keras_hub")

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures"
LITE0 = FIXTURES / "efficientnet_lite0_imagenet"
SAMPLES = ROOT / "sample_images"


def _camcli(*args, env=None, timeout=300):
    import os

    full_env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "camcli.cli", *args], capture_output=True,
                          text=True, env=full_env, timeout=timeout, cwd=ROOT)


# --------------------------------------------------------------------------- pure arrays


def test_token_grid_drops_prefix_tokens_and_reshapes_row_major():
    from camcli.adapters import TokenGrid

    rng = np.random.default_rng(0)
    for prefix, (h, w) in ((1, (3, 4)), (2, (2, 2)), (0, (4, 4))):
        tokens = rng.normal(size=(2, prefix + h * w, 5)).astype(np.float32)
        expected = np.zeros((2, h, w, 5), np.float32)
        for i in range(h):  # independent: token prefix + i*w + j is cell (i, j)
            for j in range(w):
                expected[:, i, j] = tokens[:, prefix + i * w + j]
        grid = np.asarray(TokenGrid(prefix, (h, w), 5).to_grid(tokens))
        np.testing.assert_array_equal(grid, expected)
        back = np.asarray(TokenGrid(prefix, (h, w), 5).to_tokens(grid, tokens[:, :prefix]))
        np.testing.assert_array_equal(back, tokens)


def test_token_layout_finds_class_and_distillation_tokens():
    from camcli.adapters import token_layout

    assert token_layout(197, 768, (224, 224)).prefix == 1  # ViT-B/16: CLS + 14x14
    assert token_layout(197, 768, (224, 224)).grid == (14, 14)
    assert token_layout(198, 768, (224, 224)).prefix == 2  # DeiT: CLS + distillation
    assert token_layout(49, 768, (224, 224)).prefix == 0  # Swin's final 7x7 tokens
    assert token_layout(50, 8, (64, 32)) is None  # no grid of the image's shape


def _rollout_reference(attentions, fusion="mean", discard=0.0):
    n, layers, heads, t, _ = attentions.shape
    out = []
    for i in range(n):
        result = np.eye(t)
        for layer in range(layers):
            a = {"mean": np.mean, "max": np.max, "min": np.min}[fusion](attentions[i, layer], 0)
            a = a.astype(np.float64).copy()
            if discard:
                flat = a.flatten()
                order = np.argsort(flat, kind="stable")[: int(t * t * discard)]
                order = order[order != 0]
                flat[order] = 0
                a = flat.reshape(t, t)
            a = (a + np.eye(t)) / (a + np.eye(t)).sum(axis=1)[:, None]
            result = a @ result
        out.append(result[0])
    return np.array(out)


def _softmax_rows(rng, shape):
    logits = rng.normal(size=shape) * 2
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("fusion, discard", [("mean", 0.0), ("max", 0.0), ("min", 0.5)])
def test_rollout_matches_a_per_image_reference(fusion, discard):
    from camcli.attention import rollout

    attentions = _softmax_rows(np.random.default_rng(1), (3, 4, 2, 6, 6))
    np.testing.assert_allclose(rollout(attentions, fusion, discard),
                               _rollout_reference(attentions, fusion, discard), atol=1e-12)


def _attentions_and_gradients(seed):
    """Attention probabilities (2 images, 3 layers, 4 heads, 5 tokens) and random gradients."""
    rng = np.random.default_rng(seed)
    attentions = _softmax_rows(rng, (2, 3, 4, 5, 5))
    return attentions, rng.normal(size=attentions.shape)


def test_chefer_rule_matches_a_per_image_reference():
    from camcli.attention import chefer

    attentions, gradients = _attentions_and_gradients(2)
    for i in range(2):
        relevance = np.eye(5)
        for layer in range(3):
            cam = np.zeros((5, 5))
            for head in range(4):  # the mean over heads of ReLU(grad * A)
                cam += np.clip(gradients[i, layer, head] * attentions[i, layer, head], 0, None) / 4
            relevance = relevance + cam @ relevance
        np.testing.assert_allclose(chefer(attentions, gradients)[i], relevance[0], atol=1e-12)


def test_legrad_matches_a_per_image_reference():
    """LeGrad: per layer the positive gradient averaged over heads and query rows (the class
    token's row too), then over layers; the attention values themselves play no part."""
    from camcli.attention import legrad

    attentions, gradients = _attentions_and_gradients(3)
    for i in range(2):
        total = np.zeros(5)
        for layer in range(3):
            per_layer = np.zeros(5)
            for head in range(4):
                for row in range(5):
                    per_layer += np.clip(gradients[i, layer, head, row], 0, None) / 20
            total += per_layer / 3
        np.testing.assert_allclose(legrad(attentions, gradients)[i], total, atol=1e-12)
    shuffled = attentions[:, ::-1]  # other attention values, same gradients: same relevance
    np.testing.assert_array_equal(legrad(shuffled, gradients), legrad(attentions, gradients))


# --------------------------------------------------------------------------- the tiny ViT


def test_default_layer_is_the_last_blocks_first_layer_norm(shapes_vit):
    from camcli import loading

    loaded = loading.load(str(shapes_vit.path))
    assert loaded.layer_path.endswith("transformer_block_3/ln_1")
    grid = loaded.describe()["target_grid"][0]
    assert grid == {"kind": "tokens", "grid": [6, 6], "tokens": 37, "prefix_tokens": 1}
    assert loaded.describe()["layer"] == loaded.layer_path
    other = loading.load(str(shapes_vit.path), layer="transformer_block_1/ln_1")
    assert other.layer_path.endswith("transformer_block_1/ln_1")


def test_layers_lists_token_layers_and_says_why_the_default(shapes_vit):
    run = _camcli("layers", str(shapes_vit.path))
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith("│")]
    default = [line for line in rows if "│ * │" in line]
    assert len(default) == 1 and "transformer_block_3/ln_1" in default[0]
    assert any("transformer_block_1/ln_1" in line for line in rows)
    assert all("(6, 6, 32)" in line or "(6, 6, 64)" in line for line in rows)
    assert "no class gradient" in run.stdout


def test_models_lists_hub_presets_without_tensorflow_or_keras_hub():
    import os

    code = ("import sys; sys.modules['keras_hub'] = None; from camcli.cli import main; "
            "sys.argv = ['camcli', 'models', 'vit_base*', '--json']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert run.returncode == 0, run.stderr
    listed = {row["name"]: row for row in json.loads(run.stdout)}
    vit = listed["vit_base_patch16_224_imagenet"]
    assert vit["source"] == "keras-hub" and vit["family"] == "vit"
    assert vit["input_size"] == [224, 224] and vit["parameters"] == 85798656
    assert vit["weights"] == "download"


def test_adapter_gradcam_equals_a_hand_written_gradient_tape(shapes_vit):
    """Independent: the last block is run by hand from its first layer norm's output."""
    import tensorflow as tf

    from camcli import loading
    from camcli.engine import Engine, Targets

    loaded = loading.load(str(shapes_vit.path))
    images = shapes_vit.held_out.images[:6]
    model = loaded.model
    backbone = model.backbone
    x = backbone.get_layer("vit_patching_and_embedding")(tf.constant(images))
    encoder = backbone.get_layer("vit_encoder")
    blocks = encoder.encoder_layers
    for block in blocks[:-1]:
        x = block(x)
    last = blocks[-1]
    normed = last.layer_norm_1(x)
    with tf.GradientTape() as tape:
        tape.watch(normed)
        y = last.dropout(last.mha(normed, normed)) + x
        y = last.mlp(last.layer_norm_2(y)) + y
        logits = model.output_dense(encoder.layer_norm(y)[:, 0])
        chosen = tf.argmax(logits, axis=-1)
        score = tf.reduce_sum(tf.gather(logits, chosen, batch_dims=1))
    grads = tape.gradient(score, normed).numpy()[:, 1:].reshape(6, 6, 6, -1)
    acts = normed.numpy()[:, 1:].reshape(6, 6, 6, -1)
    raw = np.maximum((acts * grads.mean(axis=(1, 2), keepdims=True)).sum(-1), 0)
    expected = raw / raw.max(axis=(1, 2), keepdims=True)
    out = Engine(loaded, Targets(), "gradcam", compiled=False).run(images)
    np.testing.assert_array_equal(out.targets[:, 0], chosen.numpy())
    np.testing.assert_allclose(out.cams[:, 0], expected, atol=1e-5)


def test_a_vit_is_explained_by_rollout_from_the_command_line(shapes_vit, tmp_path):
    """The record says the layer, the grid and rollout's options; it fits the schema."""
    from PIL import Image

    image = tmp_path / "scene.png"
    Image.fromarray((shapes_vit.held_out.images[0] * 255).astype(np.uint8)).save(image)
    run = _camcli("explain", str(image), "--model", str(shapes_vit.path), "--method", "rollout",
                  "--discard-ratio", "0.5", "--head-fusion", "max", "--preprocess", "scale01",
                  "--out-dir", str(tmp_path / "out"))
    assert run.returncode == 0, run.stderr
    record = json.loads(next((tmp_path / "out").rglob("scene.png.cam.json")).read_text())
    assert record["method"] == "rollout"
    assert record["method_options"]["discard_ratio"] == 0.5
    assert record["method_options"]["head_fusion"] == "max"
    assert record["model"]["layer"].endswith("transformer_block_3/ln_1")
    assert record["model"]["target_grid"] == [
        {"kind": "tokens", "grid": [6, 6], "tokens": 37, "prefix_tokens": 1}]
    assert schema_errors(record, "record_file") == []


@pytest.mark.parametrize("method", ["rollout", "legrad"])
def test_attention_methods_on_a_cnn_are_a_usage_error_naming_the_methods_that_apply(method):
    from camcli.api import Explainer
    from camcli.errors import UsageError

    with pytest.raises(UsageError, match=f"--method {method} needs a transformer .* use one of: "
                                         "gradcam"):
        Explainer(str(LITE0), method=method)


#: LeGrad's floor on the ground-truth ViT: measured 62 % (chance, a peak on a uniformly drawn
#: patch: 35 %); the final-score gradient it uses is weaker than the paper's per-layer score.
LEGRAD_POINTING = 0.5


def test_a_vit_is_explained_by_legrad_from_the_command_line(shapes_vit, tmp_path):
    """The CLI's LeGrad map of a scene is the engine's own, class-specific, on the patch grid."""
    from PIL import Image

    from camcli import loading
    from camcli.engine import Engine, Targets

    images = shapes_vit.held_out.images[:2]
    for i, scene in enumerate(images):
        Image.fromarray((scene * 255).round().astype(np.uint8)).save(tmp_path / f"s{i}.png")
    run = _camcli("explain", str(tmp_path / "s0.png"), str(tmp_path / "s1.png"), "--model",
                  str(shapes_vit.path), "--method", "legrad", "--preprocess", "scale01",
                  "--save-heatmap", "--out-dir", str(tmp_path / "out"))
    assert run.returncode == 0, run.stderr
    record = json.loads(next((tmp_path / "out").rglob("s0.png.cam.json")).read_text())
    assert record["method"] == "legrad"
    assert record["method_options"] == {"aug_smooth": False, "eigen_smooth": False}
    assert record["model"]["target_grid"][0]["grid"] == [6, 6]
    assert schema_errors(record, "record_file") == []
    loaded = loading.load(str(shapes_vit.path))
    saved = np.load(next((tmp_path / "out").rglob("s0.png.cam.npy")))
    pixels = np.stack([np.asarray(Image.open(tmp_path / f"s{i}.png")) / 255.0 for i in (0, 1)])
    engine = Engine(loaded, Targets(classes=(0, 1)), "legrad", compiled=False)
    maps = engine.run(pixels.astype(np.float32)).cams
    assert not np.allclose(maps[0, 0], maps[0, 1], atol=0.05)  # one map per class
    explained = record["explanations"][0]["index"]
    np.testing.assert_allclose(saved, maps[0, explained], atol=1e-5)


def test_ground_truth_peaks_fall_on_the_class_object(shapes_vit_table):
    """Rollout and the method recommended for transformers (LayerCAM at the default layer, the
    last block's input) put their peak on the class object (its box grown by one patch) in at
    least 90 % of held-out scenes."""
    table = shapes_vit_table
    assert table[("rollout", "all")] >= 0.9, table
    assert table[("legrad", "all")] >= LEGRAD_POINTING, table
    assert table[("layercam", "transformer_block_3/ln_1")] >= 0.9, table  # the default layer
    assert table[("gradcam", "vit_encoder/ln")] < 0.5, table  # why it is not the default


# --------------------------------------------------------------------------- real weights


def test_efficientnet_preset_folder_is_explained_offline(tmp_path):
    run = _camcli("explain", str(SAMPLES / "chelsea.png"), str(SAMPLES / "coffee.png"),
                  "--model", str(LITE0) + "/", "--out-dir", str(tmp_path))
    assert run.returncode == 0, run.stderr
    chelsea = json.loads((tmp_path / "sample_images" / "chelsea.png.cam.json").read_text())
    coffee = json.loads((tmp_path / "sample_images" / "coffee.png.cam.json").read_text())
    assert chelsea["predictions"][0]["index"] in range(281, 286)  # a cat class
    assert coffee["predictions"][0]["label"] == "espresso"
    model = chelsea["model"]
    assert model["layer"] == "efficient_net_backbone/top_activation"
    assert model["preprocess"] == "image_converter"
    assert model["image_converter"] == {"scale": [0.0078125], "offset": [-0.9921875],
                                        "interpolation": "bilinear", "image_size": [224, 224]}
    assert chelsea["explanations"][0]["empty"] is False
    assert schema_errors(chelsea, "record_file") == []


def test_the_converters_interpolation_resizes_the_images(tmp_path):
    """camcli resizes with the preset's interpolation (here bicubic), as Pillow does it."""
    import dataclasses
    import io

    from PIL import Image

    from camcli import images, loading

    loaded = loading.load(str(LITE0))
    assert loaded.resample == "bilinear"
    loaded.converter = dataclasses.replace(loaded.converter, interpolation="bicubic")
    assert loaded.resample == "bicubic"
    data = (SAMPLES / "coffee.png").read_bytes()
    decoded = images.decode_for_model(SAMPLES / "coffee.png", data, (224, 224), 3,
                                      resample=loaded.resample)
    expected = Image.open(io.BytesIO(data)).convert("RGB").resize(
        (224, 224), Image.Resampling.BICUBIC, reducing_gap=3.0)
    np.testing.assert_array_equal(decoded.pixels, np.asarray(expected))
    bilinear = images.decode_for_model(SAMPLES / "coffee.png", data, (224, 224), 3)
    assert not np.array_equal(bilinear.pixels, decoded.pixels)


def test_preset_name_loads_from_the_kagglehub_cache(tmp_path):
    from camcli import hub_presets

    cache = tmp_path / "cache"
    entry = hub_presets.get("efficientnet_lite0_ra_imagenet")
    handle = entry.handle.removeprefix("kaggle://").split("/")
    target = cache.joinpath("models", *handle)
    target.parent.mkdir(parents=True)
    target.symlink_to(LITE0, target_is_directory=True)
    run = _camcli("explain", str(SAMPLES / "coffee.png"), "--model",
                  "efficientnet-lite0-ra-imagenet", "--out-dir", str(tmp_path / "out"),
                  env={"KAGGLEHUB_CACHE": str(cache)})
    assert run.returncode == 0, run.stderr
    record = json.loads((tmp_path / "out" / "sample_images" / "coffee.png.cam.json").read_text())
    assert record["predictions"][0]["label"] == "espresso"
    assert record["model"]["name"] == "efficientnet_lite0_ra_imagenet"


def test_preset_name_offline_and_not_cached_is_one_line_exit_2(tmp_path):
    run = _camcli("explain", str(SAMPLES / "coffee.png"), "--model",
                  "vit_base_patch16_224_imagenet", "--out-dir", str(tmp_path / "out"),
                  env={"KAGGLEHUB_CACHE": str(tmp_path / "cache")})
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1, run.stderr
    assert str(tmp_path / "cache") in run.stderr and "save_to_preset" in run.stderr
    assert not (tmp_path / "out").exists()


def test_without_keras_hub_a_hub_model_is_a_usage_error_naming_the_extra(tmp_path):
    import os

    code = ("import sys; sys.modules['keras_hub'] = None; from camcli.cli import main; "
            "sys.argv = ['camcli', 'explain', sys.argv[1], '--model', sys.argv[2]]; main()")
    run = subprocess.run([sys.executable, "-c", code, str(SAMPLES / "coffee.png"), str(LITE0)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert run.returncode == 2
    assert "pip install 'camcli[hub]'" in run.stderr and run.stderr.count("\n") == 1


def test_preset_table_matches_keras_hub():
    import keras_hub

    from camcli import hub_presets

    presets = keras_hub.models.ImageClassifier.presets
    assert hub_presets.KERAS_HUB_VERSION == keras_hub.__version__
    assert {p.name for p in hub_presets.list_presets()} == set(presets)
    for entry in hub_presets.list_presets():
        assert entry.handle == presets[entry.name]["kaggle_handle"]
        assert entry.parameters == presets[entry.name]["metadata"].get("params")


def test_unknown_names_suggest_keras_hub_presets():
    from camcli import loading
    from camcli.errors import UnknownNameError

    with pytest.raises(UnknownNameError) as info:
        loading.load("vit_base_patch16")
    assert info.value.suggestions[0] == "vit_base_patch16_224_imagenet"
    with pytest.raises(UnknownNameError) as info:
        loading.load("resnet5")
    assert info.value.suggestions[:2] == ["resnet50", "resnet101"]  # the registry's come first
    assert "resnet_50_imagenet" in info.value.suggestions


def test_an_unknown_layer_of_a_vit_suggests_its_token_layers(shapes_vit):
    from camcli import loading
    from camcli.errors import UnknownNameError

    with pytest.raises(UnknownNameError) as info:
        loading.load(str(shapes_vit.path), layer="transformer_block_9/ln_1")
    assert any(name.endswith("transformer_block_3/ln_1") for name in info.value.suggestions)
