"""Every keras-hub image-classifier family, built from a small config with random weights:
camcli finds the default layer, makes maps of the layer's grid, and every method that applies
runs (the attention methods on ViT and DeiT; elsewhere they are a usage error)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

S = (32, 32, 3)
LITE0 = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "efficientnet_lite0_imagenet"

# family: (backbone config, the default layer's path ends with, its grid (h, w))
FAMILIES = {
    "ResNet": (lambda m: m.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 64],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block",
        image_shape=S), "stack1_block0_out", (4, 4)),
    "MobileNet": (lambda m: m.MobileNetBackbone(
        stackwise_expansion=[[16], [4]], stackwise_num_blocks=[1, 1],
        stackwise_num_filters=[[16], [24]], stackwise_kernel_size=[[3], [3]],
        stackwise_num_strides=[[2], [2]], stackwise_se_ratio=[[0.25], [None]],
        stackwise_activation=[["relu"], ["relu"]], stackwise_padding=[[1], [1]],
        output_num_filters=32, depthwise_filters=8, depthwise_stride=2,
        depthwise_residual=False, last_layer_filter=32, squeeze_and_excite=0.5,
        image_shape=S), "block_3_0", (2, 2)),
    "CSPNet": (lambda m: m.CSPNetBackbone(
        stem_filters=8, stem_kernel_size=3, stem_strides=2, stackwise_depth=[1, 1],
        stackwise_strides=[1, 2], stackwise_num_filters=[16, 32], block_type="dark_block",
        stage_type="dark", image_shape=S), "dark_block_add", (7, 7)),
    "DenseNet": (lambda m: m.DenseNetBackbone(
        stackwise_num_repeats=[1, 1], growth_rate=8, image_shape=S), "relu", (4, 4)),
    "HGNetV2": (lambda m: m.HGNetV2Backbone(
        depths=[1, 1], embedding_size=8, hidden_sizes=[16, 32], stem_channels=[3, 8, 8],
        hidden_act="relu", use_learnable_affine_block=False,
        stackwise_stage_filters=[[8, 8, 16, 1, 2, 3], [16, 8, 32, 1, 2, 3]],
        apply_downsample=[False, True], use_lightweight_conv_block=[False, False],
        image_shape=S), "head_last", (4, 4)),
    "VGG": (lambda m: m.VGGBackbone(
        stackwise_num_repeats=[1, 1], stackwise_num_filters=[8, 16], image_shape=S),
        "fc2", (2, 2)),
    "Xception": (lambda m: m.XceptionBackbone(
        stackwise_conv_filters=[[32, 64], [128, 128], [256, 256]],
        stackwise_pooling=[False, True, False], image_shape=(64, 64, 3)),
        "block3_sepconv2_act", (15, 15)),
    "MiT": (lambda m: m.MiTBackbone(
        layerwise_depths=[1, 1], num_layers=2, layerwise_num_heads=[1, 2],
        layerwise_sr_ratios=[2, 1], max_drop_path_rate=0.0, layerwise_patch_sizes=[7, 3],
        layerwise_strides=[4, 2], image_shape=S, hidden_dims=[8, 16]),
        "output_level_1", (4, 4)),
    "ViT": (lambda m: m.ViTBackbone(
        image_shape=S, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32),
        "transformer_block_2/ln_1", (4, 4)),
    "DeiT": (lambda m: m.DeiTBackbone(
        image_shape=S, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
        intermediate_dim=32), "transformer_block_2/ln_1", (4, 4)),
    "SwinTransformer": (lambda m: m.SwinTransformerBackbone(
        image_shape=S, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4,
        patch_size=4), "swin_transformer_backbone/norm", (4, 4)),
}
ATTENTION_FAMILIES = ("ViT", "DeiT")
WIDE = ("VGG", "EfficientNet", "Xception")  # 4096 (fc2 as a conv), 1280, 256 channels


def _load(family: str, tmp_path):
    from camcli import loading

    if family == "EfficientNet":  # the real preset's architecture, its weights not read
        return loading.load(str(LITE0), weights="none")
    make, _, _ = FAMILIES[family]
    classifier = getattr(keras_hub.models, f"{family}ImageClassifier")(
        backbone=make(keras_hub.models), num_classes=3, preprocessor=None)
    path = tmp_path / f"{family}.keras"
    classifier.save(str(path))
    return loading.load(str(path))


@pytest.mark.parametrize("family", [*FAMILIES, "EfficientNet"])
def test_family_default_layer_grid_and_methods(family, tmp_path):
    from camcli.engine import Engine, Targets
    from camcli.errors import UsageError
    from camcli.methods import METHODS, Needs

    loaded = _load(family, tmp_path)
    _, ending, grid = FAMILIES.get(family, (None, "efficient_net_backbone/top_activation",
                                            (7, 7)))
    assert loaded.layer_path.endswith(ending), loaded.layer_path
    height, width = loaded.input_size
    images = np.random.default_rng(0).uniform(0, 1, (2, height, width, 3)).astype(np.float32)
    for name, method in METHODS.items():
        if method.needs_attention and family not in ATTENTION_FAMILIES:
            with pytest.raises(UsageError, match="use one of: gradcam"):
                Engine(loaded, Targets(), name, compiled=False)
            continue
        if method.scores_channels and family in WIDE:
            continue  # thousands of channels to score: covered on the other families
        if method.needs is Needs.HEAD_WEIGHTS:  # CAM: only where a GAP + dense head reads it
            try:
                output = Engine(loaded, Targets(), name, compiled=False).run(images)
            except UsageError as exc:
                assert "global average pooling" in str(exc)
                continue
        else:
            output = Engine(loaded, Targets(), name, compiled=False).run(images)
        # input-resolution methods (FullGrad, guided backprop) make maps of the input's size
        expected = loaded.input_size if method.input_needs is not None else grid
        assert output.cams.shape == (2, 1, *expected), (name, output.cams.shape)
        assert np.isfinite(output.cams).all(), name
