"""Config validation at construction and model-size limits (issue 12): every constraint a model build or forward
relies on is an InputError when the config is made (also from a config.json, naming the file); a config that
implies an enormous model is refused before anything is allocated; the size estimate equals the built model's."""

from __future__ import annotations

import json
import math
import os
import re
import time

import pytest
import torch
from transformers import AutoConfig, AutoModel

from hf_tts import (
    CFGMotionConfig,
    CFGMotionModel,
    E2TTSConfig,
    E2TTSModel,
    F5TTSConfig,
    F5TTSModel,
    VocosConfig,
    VocosModel,
)
from hf_tts.configuration_utils import MAX_CONFIG_SIZE, MAX_DIFFUSION_STEPS
from hf_tts.errors import InputError
from hf_tts.limits import MAX_SAMPLING_STEPS
from hf_tts.modeling_utils import (
    MAX_MODEL_PARAMETERS,
    allow_large_models,
    check_model_size,
    estimate_model_size,
)
from tests.conftest import upstream_fixture

TINY_MEL = dict(mel_dim=8, n_fft=64, hop_length=16, win_length=64, sampling_rate=8000)
TINY_F5 = dict(dim=32, depth=2, heads=2, dim_head=16, text_dim=16, conv_layers=1, text_num_embeds=10, **TINY_MEL)
TINY_E2 = dict(dim=32, depth=2, heads=2, dim_head=16, text_num_embeds=10, **TINY_MEL)
TINY_VOCOS = dict(n_mels=8, n_fft=64, hop_length=16, sampling_rate=8000, dim=16, intermediate_dim=32, num_layers=2)
TINY_CFG = dict(
    architecture="body",
    nfeats=6,
    latent_dim=16,
    ff_size=32,
    layers=2,
    heads=2,
    cond_feature_dim=8,
    max_cond_len=20,
    max_keyframes=4,
    keyframe_stride=5,
    window_overlap=5,
    diffusion_steps=10,
    num_inference_steps=5,
)


def built_size(model: torch.nn.Module) -> tuple[int, int]:
    return sum(p.numel() for p in model.parameters()), sum(b.numel() for b in model.buffers())


# ---------------------------------------------------------------- construction


def test_negative_dim_is_a_value_error_naming_field_and_value():
    with pytest.raises(ValueError) as caught:
        F5TTSConfig(dim=-1)
    assert isinstance(caught.value, InputError)
    assert "dim must be > 0, got -1" in str(caught.value) and "F5TTSConfig" in str(caught.value)


@pytest.mark.parametrize(
    "config_class, base, field, value, rule",
    [
        (F5TTSConfig, TINY_F5, "dim", 40, "dim must be a multiple of 16"),
        (F5TTSConfig, TINY_F5, "dim_head", 15, "dim_head must be even"),
        (F5TTSConfig, TINY_F5, "text_dim", 0, "text_dim must be > 0"),
        (F5TTSConfig, TINY_F5, "text_dim", -4, "text_dim must be > 0"),
        (F5TTSConfig, TINY_F5, "text_dim", 15, "text_dim must be even when conv_layers > 0"),
        (F5TTSConfig, TINY_F5, "win_length", 128, "win_length (128) must not exceed n_fft (64)"),
        (F5TTSConfig, TINY_F5, "hop_length", 0, "hop_length must be > 0"),
        (F5TTSConfig, TINY_F5, "n_fft", -64, "n_fft must be > 0"),
        (F5TTSConfig, TINY_F5, "mel_dim", 0, "mel_dim must be > 0"),
        (F5TTSConfig, TINY_F5, "pe_attn_head", 3, "pe_attn_head must be None or in [1, heads=2]"),
        (F5TTSConfig, TINY_F5, "frac_lengths_mask", [0.1, 0.2, 0.3], "frac_lengths_mask must be a pair"),
        (F5TTSConfig, TINY_F5, "sigma", math.nan, "sigma must be a finite number"),
        (F5TTSConfig, TINY_F5, "sway_sampling_coef", math.inf, "sway_sampling_coef must be None or in"),
        (F5TTSConfig, TINY_F5, "steps", MAX_SAMPLING_STEPS + 1, "steps must be at most 1000"),
        (F5TTSConfig, TINY_F5, "sway_sampling_coef", 5.0, "sway_sampling_coef must be None or in [-1, "),
        (F5TTSConfig, TINY_F5, "cfg_strength", 1e6, "cfg_strength must be in [0, 100]"),
        (F5TTSConfig, TINY_F5, "text_num_embeds", MAX_CONFIG_SIZE + 1, "text_num_embeds must be in [0, 1048576]"),
        (F5TTSConfig, TINY_F5, "vocoder_config", dict(model_type="hf_tts_vocos"), "vocoder_config does not fit"),
        (E2TTSConfig, TINY_E2, "depth", 3, "depth must be even"),
        (E2TTSConfig, TINY_E2, "heads", 0, "heads must be > 0"),
        (VocosConfig, TINY_VOCOS, "n_fft", 63, "n_fft must be even"),
        (VocosConfig, TINY_VOCOS, "hop_length", 128, "hop_length (128) must not exceed n_fft (64)"),
        (VocosConfig, TINY_VOCOS, "layer_norm_eps", 0.0, "layer_norm_eps must be > 0"),
        (VocosConfig, TINY_VOCOS, "layer_scale_init_value", math.nan, "layer_scale_init_value must be a finite"),
        (CFGMotionConfig, TINY_CFG, "heads", 3, "latent_dim (16) must be divisible by heads (3)"),
        (CFGMotionConfig, TINY_CFG, "num_inference_steps", 6, "num_inference_steps=6 cannot be reached"),
        (CFGMotionConfig, TINY_CFG, "diffusion_steps", MAX_DIFFUSION_STEPS + 10, "diffusion_steps must be at most"),
        (CFGMotionConfig, TINY_CFG, "guidance_scale", 1e4, "guidance_scale must be in [0, 100]"),
        (CFGMotionConfig, TINY_CFG, "quantizer", dict(epsilon=0.0), "quantizer.epsilon must be > 0"),
        (CFGMotionConfig, TINY_CFG, "quantizer", dict(bins=MAX_CONFIG_SIZE + 1), "quantizer.bins must be in"),
    ],
)
def test_cross_field_rules_are_input_errors(config_class, base, field, value, rule):
    config_class(**base)  # the base is valid
    with pytest.raises(InputError) as caught:
        config_class(**{**base, field: value})
    assert rule in str(caught.value)
    assert len(str(caught.value).splitlines()) == 1


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("depth", "12", "Field 'depth' expected int, got str (value: '12')"),
        ("heads", 1e9, "Field 'heads' expected int, got float (value: 1000000000.0)"),
        ("dim", True, "Field 'dim' expected int, got bool"),
        ("qk_norm", ["rms_norm"], "Field 'qk_norm'"),
    ],
)
def test_wrong_types_are_input_errors(field, value, message):
    with pytest.raises(InputError, match="invalid F5TTSConfig: ") as caught:
        F5TTSConfig(**{**TINY_F5, field: value})
    assert message in str(caught.value)


def test_assigning_a_wrong_type_later_is_an_input_error():
    config = F5TTSConfig(**TINY_F5)
    with pytest.raises(InputError, match="Field 'dim' expected int"):
        config.dim = "64"


def test_every_tiny_config_builds_and_runs_its_forward():
    """The rules above are what a build and a forward need: valid tiny configs build and run."""
    torch.manual_seed(0)
    for config, model_class in ((F5TTSConfig(**TINY_F5), F5TTSModel), (E2TTSConfig(**TINY_E2), E2TTSModel)):
        model = model_class(config).eval()
        x = torch.randn(1, 5, config.mel_dim)
        out = model.backbone(x, x, torch.tensor([[1, 2, -1]]), torch.tensor([0.5]))
        assert out.shape == (1, 5, config.mel_dim) and torch.isfinite(out).all()
    vocos = VocosModel(VocosConfig(**TINY_VOCOS)).eval()
    assert torch.isfinite(vocos.decode(torch.randn(1, 8, 6))).all()


# ---------------------------------------------------------------- config.json


def _tiny_folder(tmp_path, **patch):
    folder = tmp_path / "tiny"
    F5TTSModel(F5TTSConfig(**TINY_F5)).save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **patch}))
    return folder


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"depth": "12"}, "Field 'depth' expected int, got str"),
        ({"heads": 1e9}, "Field 'heads' expected int, got float"),
        ({"dim": -1}, "dim must be > 0, got -1"),
        ({"win_length": 4096}, "win_length (4096) must not exceed n_fft (64)"),
    ],
)
def test_bad_config_json_names_the_file(tmp_path, patch, message):
    folder = _tiny_folder(tmp_path, **patch)
    for load in (AutoConfig.from_pretrained, AutoModel.from_pretrained, F5TTSConfig.from_pretrained):
        with pytest.raises(InputError) as caught:
            load(str(folder))
        assert str(caught.value).startswith(f"{folder}/config.json: ") and message in str(caught.value)


@pytest.mark.parametrize("patch", [{"depth": 1_000_000}, {"heads": 1_000_000, "dim_head": 1_000_000}])
def test_huge_config_json_is_refused_before_allocation(tmp_path, patch):
    folder = _tiny_folder(tmp_path, **patch)
    started = time.monotonic()
    with pytest.raises(InputError, match=re.escape(f"above the {MAX_MODEL_PARAMETERS:.0e} limit") + ".*--allow-large"):
        AutoModel.from_pretrained(str(folder))
    assert time.monotonic() - started < 20  # an estimate, not a build of a million layers


# ---------------------------------------------------------------- size estimate


def _fixture_configs():
    from hf_tts.convert.a2p import read_a2p_checkpoint
    from hf_tts.convert.f5 import resolve_arch
    from hf_tts.convert.vocos import vocos_config_from_yaml

    return [
        (F5TTSModel, resolve_arch(upstream_fixture("f5_v1_tiny") / "arch.json")),
        (F5TTSModel, resolve_arch(upstream_fixture("f5_v0_tiny") / "arch.json")),
        (E2TTSModel, resolve_arch(upstream_fixture("e2_tiny") / "arch.json")),
        (VocosModel, vocos_config_from_yaml(upstream_fixture("vocos_tiny") / "config.yaml")),
        (CFGMotionModel, read_a2p_checkpoint(upstream_fixture("a2p_face_tiny")).config),
        (CFGMotionModel, read_a2p_checkpoint(upstream_fixture("a2p_pose_tiny")).config),
    ]


def _tiny_configs():
    vocoder = dict(model_type="hf_tts_vocos", **{**TINY_VOCOS, "num_layers": 3})
    return [
        (F5TTSModel, F5TTSConfig(**TINY_F5)),
        (F5TTSModel, F5TTSConfig(**{**TINY_F5, "depth": 5, "conv_layers": 3, "qk_norm": "rms_norm"})),
        (F5TTSModel, F5TTSConfig(**{**TINY_F5, "long_skip_connection": True, "vocoder_config": vocoder})),
        (E2TTSModel, E2TTSConfig(**{**TINY_E2, "depth": 6})),
        (E2TTSModel, E2TTSConfig(**{**TINY_E2, "depth": 4, "skip_connect_type": "add", "conv_layers": 2})),
        (VocosModel, VocosConfig(**{**TINY_VOCOS, "num_layers": 5})),
        (CFGMotionModel, CFGMotionConfig(**{**TINY_CFG, "layers": 3, "post_conv": False})),
        (CFGMotionModel, CFGMotionConfig(**{**TINY_CFG, "quantizer": dict(enabled=True, ssl_dim=8, n_q=3, bins=4)})),
        (
            CFGMotionModel,
            CFGMotionConfig(
                **{**TINY_CFG, "architecture": "face", "use_keyframes": False, "cond_encoder_layers": 2, "layers": 3}
            ),
        ),
    ]


@pytest.mark.parametrize("source", ["fixtures", "tiny"])
def test_size_estimate_equals_the_built_model(source):
    """Exact, not approximate: parameters and buffer elements equal those of the model actually built."""
    cases = _fixture_configs() if source == "fixtures" else _tiny_configs()
    for model_class, config in cases:
        estimate = estimate_model_size(model_class, config)
        assert (estimate.parameters, estimate.buffers) == built_size(model_class(config)), config.architecture


def test_size_estimate_of_an_audio_encoder_is_exact():
    encoder = dict(
        model_type="wav2vec2",
        hidden_size=8,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=16,
        conv_dim=[8, 8],
        conv_stride=[5, 2],
        conv_kernel=[10, 3],
        num_conv_pos_embeddings=4,
        num_conv_pos_embedding_groups=2,
    )
    config = CFGMotionConfig(**{**TINY_CFG, "audio_encoder": encoder})
    estimate = estimate_model_size(CFGMotionModel, config)
    assert (estimate.parameters, estimate.buffers) == built_size(CFGMotionModel(config))


def test_released_sizes_are_below_the_limit():
    base = F5TTSConfig.from_preset("F5TTS_v1_Base", vocoder_config=dict(model_type="hf_tts_vocos"))
    size = check_model_size(F5TTSModel, base)
    assert 0.3e9 < size.elements < MAX_MODEL_PARAMETERS


def test_large_models_need_permission():
    config = VocosConfig(dim=60000)  # the vocos yaml `dim: 60000` of the issue: 1.58e9 parameters
    with pytest.raises(InputError, match=re.escape("VocosConfig describes a model of 1.58e+09")):
        check_model_size(VocosModel, config)
    with pytest.raises(InputError, match="above the"):
        AutoModel.from_config(config)
    assert check_model_size(VocosModel, config, allow_large=True).elements > MAX_MODEL_PARAMETERS
    with allow_large_models():
        check_model_size(VocosModel, config)
        with allow_large_models(False):  # an inner "no" keeps the enclosing permission
            check_model_size(VocosModel, config)
    with pytest.raises(InputError):
        check_model_size(VocosModel, config)


def test_saved_files_get_ordinary_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        VocosModel(VocosConfig(**TINY_VOCOS)).save_pretrained(tmp_path / "out")
    finally:
        os.umask(previous)
    modes = {path.name: path.stat().st_mode & 0o777 for path in (tmp_path / "out").iterdir()}
    assert modes == {"config.json": 0o644, "model.safetensors": 0o644}
