"""Upstream's architecture presets as plain dicts: F5-TTS / E2-TTS `model.arch` blocks and audio2photoreal's face /
body settings.

They live apart from the configuration classes so that the CLI can name and list them (`hf-tts convert f5 --help`,
`hf-tts presets`) without importing transformers or torch; the configuration modules import them from here.
"""

from __future__ import annotations

# Upstream's src/f5_tts/configs/*.yaml `model.arch` blocks (dim_head 64, dropout 0.1 everywhere).
F5_PRESETS: dict[str, dict] = {
    "F5TTS_v1_Base": dict(
        dim=1024,
        depth=22,
        heads=16,
        ff_mult=2,
        text_dim=512,
        conv_layers=4,
        text_mask_padding=True,
        qk_norm=None,
        pe_attn_head=None,
    ),
    "F5TTS_Base": dict(
        dim=1024,
        depth=22,
        heads=16,
        ff_mult=2,
        text_dim=512,
        conv_layers=4,
        text_mask_padding=False,
        qk_norm=None,
        pe_attn_head=1,
    ),
    "F5TTS_v1_Small": dict(
        dim=768,
        depth=18,
        heads=12,
        ff_mult=2,
        text_dim=512,
        conv_layers=4,
        text_mask_padding=True,
        qk_norm=None,
        pe_attn_head=None,
        tokenizer_type="char",
    ),
    "F5TTS_Small": dict(
        dim=768,
        depth=18,
        heads=12,
        ff_mult=2,
        text_dim=512,
        conv_layers=4,
        text_mask_padding=False,
        qk_norm=None,
        pe_attn_head=1,
    ),
}

# Upstream's E2TTS_*.yaml `model.arch` blocks: no text_dim (so text_dim = mel_dim), no ConvNeXt text blocks.
E2_PRESETS: dict[str, dict] = {
    "E2TTS_Base": dict(dim=1024, depth=24, heads=16, ff_mult=4, text_mask_padding=False, pe_attn_head=1),
    "E2TTS_Small": dict(dim=768, depth=20, heads=12, ff_mult=4, text_mask_padding=False, pe_attn_head=1),
}

# Upstream's values per data format (`utils/model_util.get_model_args` + README training flags). Face: 256 expression
# codes, conditioning = 2 x 512 vq-wav2vec features + 1014 lip-vertex features, a 2-layer rotary cond encoder.
# Body: 104 joint angles, 1 fps keyframe cross-attention, the dilated post-conv stack.
CFG_MOTION_ARCHITECTURES: dict[str, dict] = {
    "face": dict(
        nfeats=256,
        latent_dim=512,
        layers=8,
        cond_feature_dim=2038,
        cond_encoder_layers=2,
        use_keyframes=False,
        post_conv=False,
        guidance_scale=10.0,
    ),
    "body": dict(
        nfeats=104,
        latent_dim=256,
        layers=6,
        cond_feature_dim=1024,
        cond_encoder_layers=0,
        use_keyframes=True,
        post_conv=True,
        guidance_scale=2.0,
    ),
}

__all__ = ["CFG_MOTION_ARCHITECTURES", "E2_PRESETS", "F5_PRESETS"]
