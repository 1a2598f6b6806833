"""Config validation: types and values checked with the field name, freeze_quantizer refused, upstream presets."""

from __future__ import annotations

import pytest
from huggingface_hub.errors import StrictDataclassError

from hf_tts.models.cfg_motion import CFGMotionConfig
from hf_tts.models.e2 import E2TTSConfig
from hf_tts.models.f5 import F5TTSConfig
from hf_tts.models.vocos import VocosConfig

# Upstream src/f5_tts/configs/*.yaml `model.arch` (+ `model.tokenizer`); dim_head 64 and dropout 0.1 throughout.
UPSTREAM_ARCH = {
    "F5TTS_v1_Base": dict(dim=1024, depth=22, heads=16, ff_mult=2, text_dim=512, conv_layers=4,
                          text_mask_padding=True, qk_norm=None, pe_attn_head=None, tokenizer_type="pinyin"),
    "F5TTS_Base": dict(dim=1024, depth=22, heads=16, ff_mult=2, text_dim=512, conv_layers=4,
                       text_mask_padding=False, qk_norm=None, pe_attn_head=1, tokenizer_type="pinyin"),
    "F5TTS_v1_Small": dict(dim=768, depth=18, heads=12, ff_mult=2, text_dim=512, conv_layers=4,
                           text_mask_padding=True, qk_norm=None, pe_attn_head=None, tokenizer_type="char"),
    "F5TTS_Small": dict(dim=768, depth=18, heads=12, ff_mult=2, text_dim=512, conv_layers=4,
                        text_mask_padding=False, qk_norm=None, pe_attn_head=1, tokenizer_type="pinyin"),
    "E2TTS_Base": dict(dim=1024, depth=24, heads=16, ff_mult=4, text_dim=None, conv_layers=0,
                       text_mask_padding=False, qk_norm=None, pe_attn_head=1, tokenizer_type="pinyin"),
    "E2TTS_Small": dict(dim=768, depth=20, heads=12, ff_mult=4, text_dim=None, conv_layers=0,
                        text_mask_padding=False, qk_norm=None, pe_attn_head=1, tokenizer_type="pinyin"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(UPSTREAM_ARCH))
def test_presets_have_upstream_values(name):
    config_class = E2TTSConfig if name.startswith("E2") else F5TTSConfig
    config = config_class.from_preset(name)
    assert config.architecture == name
    for field, value in UPSTREAM_ARCH[name].items():
        assert getattr(config, field) == value, field
    # Shared upstream values: head size, dropout, vocab, vocos mel, sampling defaults.
    assert (config.dim_head, config.dropout, config.text_num_embeds) == (64, 0.1, 2545)
    assert (config.mel_dim, config.sampling_rate, config.n_fft, config.hop_length, config.win_length) == (
        100,
        24000,
        1024,
        256,
        1024,
    )
    assert config.mel_spec_type == "vocos"
    assert (config.steps, config.cfg_strength, config.sway_sampling_coef, config.ode_method) == (32, 2.0, -1.0, "euler")
    assert config.text_embed_dim == (100 if name.startswith("E2") else 512)


def test_preset_overrides_and_unknown_name():
    assert F5TTSConfig.from_preset("F5TTS_Base", depth=2).depth == 2
    with pytest.raises(ValueError, match=r"unknown F5TTSConfig preset 'F5TTS_v2'.*F5TTS_v1_Base"):
        F5TTSConfig.from_preset("F5TTS_v2")
    with pytest.raises(ValueError, match="E2TTS_Base"):
        E2TTSConfig.from_preset("F5TTS_v1_Base")


@pytest.mark.parametrize(
    ("config_class", "kwargs", "field"),
    [
        (F5TTSConfig, {"dim": "1024"}, "dim"),
        (F5TTSConfig, {"text_mask_padding": "yes"}, "text_mask_padding"),
        (F5TTSConfig, {"depth": 0}, "depth"),
        (F5TTSConfig, {"heads": -1}, "heads"),
        (F5TTSConfig, {"qk_norm": "layer_norm"}, "qk_norm"),
        (F5TTSConfig, {"tokenizer_type": "byte"}, "tokenizer_type"),
        (F5TTSConfig, {"mel_spec_type": "bigvgan"}, "mel_spec_type"),
        (F5TTSConfig, {"ode_method": "rk4"}, "ode_method"),
        (F5TTSConfig, {"audio_drop_prob": 1.5}, "audio_drop_prob"),
        (F5TTSConfig, {"frac_lengths_mask": (0.9, 0.1)}, "frac_lengths_mask"),
        (F5TTSConfig, {"cfg_strength": -1.0}, "cfg_strength"),
        (E2TTSConfig, {"depth": 3}, "depth"),
        (E2TTSConfig, {"skip_connect_type": "mul"}, "skip_connect_type"),
        # every config of the package is type-checked, not only the F5/E2 ones
        (VocosConfig, {"dim": "512"}, "dim"),
        (VocosConfig, {"num_layers": True}, "num_layers"),
        (CFGMotionConfig, {"latent_dim": "512"}, "latent_dim"),
    ],
)
def test_wrong_values_raise_with_the_field_name(config_class, kwargs, field):
    with pytest.raises((ValueError, StrictDataclassError), match=field):
        config_class(**kwargs)


@pytest.mark.parametrize("config_class", [F5TTSConfig, E2TTSConfig])
@pytest.mark.parametrize("value", [True, False])
def test_freeze_quantizer_refused(config_class, value):
    with pytest.raises(ValueError, match="freeze_quantizer.*no voice quantizer"):
        config_class(freeze_quantizer=value)


def test_config_round_trip(tmp_path):
    config = F5TTSConfig.from_preset("F5TTS_Base", depth=3)
    config.save_pretrained(tmp_path)
    loaded = F5TTSConfig.from_pretrained(tmp_path)
    assert (loaded.architecture, loaded.depth, loaded.pe_attn_head, loaded.text_mask_padding) == (
        "F5TTS_Base",
        3,
        1,
        False,
    )
