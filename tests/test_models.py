import numpy as np
import pytest

from imgcls_utils import model_utils
from imgcls_utils.config_rules import RULES
from imgcls_utils.model_utils import ModelConfigError
from imgcls_utils.quiet_tensorflow import keras
from imgcls_utils.training import models

# A small model, and one step per epoch on write_class_folder's 21 training images (Hyperparameters'
# 50 steps only repeat them): the runs made of it test the machinery, not how well it learns.
SMALL = {"data.image_size": [16, 16], "data.channels": 1, "model.conv_filters": [8],
         "model.dense_units": 16, "train.min_steps_per_epoch": 1}
# The smallest MobileNetV2 at its smallest input: builds in a second, trains in a few.
TINY_TRANSFER = {**SMALL, "model.family": "transfer", "transfer.backbone": "mobilenet_v2",
                 "transfer.alpha": 0.35, "transfer.weights": "none"}


def build(make_config, classes: int = 3, **overrides):
    """The model of ``SMALL`` plus ``overrides`` for 16x16 grayscale images."""
    cfg = make_config(**{**SMALL, **overrides})
    return model_utils.build_model(cfg.model, cfg.transfer, (16, 16, 1), classes)


def layer_names(model) -> list[str]:
    return [layer.name for layer in model.layers]


@pytest.mark.parametrize("family", ["cnn", "mlp"])
def test_build_model_families(make_config, family):
    model = build(make_config, 5, **{"model.family": family})
    names = layer_names(model)
    assert model.output_shape == (None, 5) and names[:2] == ["image", "rescale"]
    assert ("block1_conv1" in names) == (family == "cnn")
    assert ("hidden" in names) == (family == "mlp")


def test_batch_norm_is_optional_and_uses_the_configured_momentum(make_config):
    with_bn = build(make_config, 3)
    bn = [layer for layer in with_bn.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bn) == 2 and bn[0].momentum == 0.9
    without = build(make_config, 3, **{"model.batch_norm": False})
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in without.layers)
    params = model_utils.count_parameters(with_bn)
    assert params["total"] == params["trainable"] + params["non_trainable"]
    assert params["non_trainable"] == 2 * 2 * 8  # moving mean and variance of two BN layers


def test_residual_blocks_add_a_projected_shortcut_when_the_width_changes(make_config):
    names = layer_names(build(make_config, **{"model.residual": True, "model.conv_filters": [8, 8]}))
    assert {"block1_add", "block2_add", "block1_shortcut"} <= set(names)
    assert "block2_shortcut" not in names  # same width: the identity is the shortcut


def test_flatten_pooling_keeps_the_feature_map_layout(make_config):
    average = build(make_config, 3)
    flat = build(make_config, 3, **{"model.pooling": "flatten"})
    assert average.get_layer("global_pool").output.shape[-1] == 8
    assert flat.get_layer("flatten").output.shape[-1] == 8 * 8 * 8  # 16x16 pooled once, 8 filters
    assert "global_pool" not in layer_names(flat)


def test_l2_regularizes_every_kernel(make_config):
    model = build(make_config, 3, **{"model.l2": 0.01})
    kernels = [layer for layer in model.layers if hasattr(layer, "kernel_regularizer")]
    assert len(kernels) == 4 and all(layer.kernel_regularizer for layer in kernels)
    model(np.ones((1, 16, 16, 1), "float32"))
    assert len(model.losses) == 4


def test_backbone_choices_in_the_config_are_the_built_ones():
    assert RULES["transfer.backbone"].allowed == " | ".join(models.BACKBONES)


@pytest.mark.parametrize("backbone", list(models.BACKBONES))
def test_each_backbone_gets_its_own_preprocessing(backbone):
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    module = getattr(keras.applications, models.BACKBONES[backbone].module)
    expected = module.preprocess_input(pixels.copy())
    got = models.BackbonePreprocessing(backbone)(pixels)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-3)


def test_transfer_model_resizes_and_converts_gray_to_rgb(make_config):
    model = build(make_config, 4, **TINY_TRANSFER)
    assert model.get_layer("resize").output.shape[1:] == (32, 32, 1)
    assert model.get_layer("gray_to_rgb").output.shape[-1] == 3
    assert model.output_shape == (None, 4)


def test_backbone_input_size_is_raised_to_the_minimum_or_refused(make_config):
    auto = make_config(**{**TINY_TRANSFER, "transfer.backbone": "inception_v3"}).transfer
    assert models.backbone_input_size(auto, (32, 40)) == (75, 75)
    assert models.backbone_input_size(make_config(**TINY_TRANSFER).transfer, (40, 64)) == (40, 64)
    small = make_config(**{**TINY_TRANSFER, "transfer.backbone": "inception_v3",
                           "transfer.input_size": 64}).transfer
    with pytest.raises(ModelConfigError, match="below inception_v3's minimum of 75"):
        models.backbone_input_size(small, (32, 32))


def test_transfer_model_round_trips_through_a_safe_mode_load(make_config, tmp_path):
    model = build(make_config, 3, **TINY_TRANSFER)
    pixels = np.random.default_rng(1).uniform(0, 255, (2, 16, 16, 1)).astype("float32")
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    np.testing.assert_allclose(loaded.predict_on_batch(pixels), model.predict_on_batch(pixels),
                               atol=1e-6)


def test_pretrained_backbone_starts_frozen_and_fine_tuning_keeps_batch_norm_frozen(
        make_config, tmp_path):
    weights = tmp_path / "backbone.weights.h5"
    keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3),
                                   alpha=0.35).save_weights(weights)
    model = build(make_config, 3, **{**TINY_TRANSFER, "transfer.weights": str(weights)})
    assert models.has_frozen_backbone(model)
    head_only = model_utils.count_parameters(model)["trainable"]
    assert models.unfreeze_top_layers(model, 10) > 0
    backbone = model.get_layer(models.BACKBONE_LAYER)
    assert not any(layer.trainable for layer in backbone.layers[:-10])
    assert not any(layer.trainable for layer in backbone.layers
                   if isinstance(layer, keras.layers.BatchNormalization))
    assert model_utils.count_parameters(model)["trainable"] > head_only


def test_weights_that_cannot_be_had_are_clear_errors(make_config, tmp_path, monkeypatch):
    with pytest.raises(ModelConfigError, match="transfer.weights: file .*nope.h5 does not exist"):
        build(make_config, **{**TINY_TRANSFER, "transfer.weights": str(tmp_path / "nope.h5")})
    # An unreachable proxy makes this machine offline for the download, whatever the network.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    imagenet = {**TINY_TRANSFER, "transfer.weights": "imagenet", "transfer.input_size": 96,
                "transfer.alpha": 0.5}
    with pytest.raises(ModelConfigError, match="offline.*https://storage.googleapis.com/.*h5.*"
                                               "set transfer.weights to its path"):
        build(make_config, **imagenet)
    with pytest.raises(ModelConfigError, match="exist only for 0.35"):
        build(make_config, **{**imagenet, "transfer.alpha": 0.4, "transfer.input_size": "auto"})


def test_the_output_layer_stays_float32_under_mixed_precision(make_config):
    previous = keras.config.dtype_policy().name
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = build(make_config, 3)
    finally:
        keras.config.set_dtype_policy(previous)
    assert model.get_layer("block1_conv1").compute_dtype == "bfloat16"
    assert model.output.dtype == "float32"
