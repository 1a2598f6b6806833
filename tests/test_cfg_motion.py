"""CFG motion model behaviour: classifier-free guidance, windowed long conditioning, training loss and Trainer,
save/load round trips (every buffer), config validation and specific errors for bad input. Tiny random models."""

from __future__ import annotations

import math

import pytest
import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, AutoModel, Trainer, TrainingArguments

from hf_tts import CFGMotionConfig, CFGMotionModel
from hf_tts.diffusion import DiffusionSchedule, ddim_timesteps
from hf_tts.errors import InputError

TINY = dict(latent_dim=16, heads=2, layers=1, ff_size=32, cond_feature_dim=8, max_cond_len=32, dropout=0.0)


def tiny_model(architecture: str = "body", **overrides) -> CFGMotionModel:
    torch.manual_seed(0)
    fields = {**TINY, "nfeats": 6, **overrides}
    if architecture == "face":
        fields.setdefault("cond_encoder_layers", 1)
    return CFGMotionModel(CFGMotionConfig(architecture=architecture, **fields)).eval()


def inputs(model: CFGMotionModel, batch: int = 2, frames: int = 12, cond_len: int = 20):
    config = model.config
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, frames, config.nfeats, generator=generator)
    cond = torch.randn(batch, cond_len, config.cond_feature_dim, generator=generator)
    keyframes = None
    if config.use_keyframes:
        count = math.ceil(frames / config.keyframe_stride)
        keyframes = torch.randn(batch, count, config.nfeats, generator=generator)
    timesteps = torch.tensor([10, 700] * batch)[:batch]
    return x, timesteps, cond, keyframes


# --- classifier-free guidance ---------------------------------------------------------------------------------


def test_audio_drop_rate_within_three_sigma():
    model = tiny_model("face")
    x, timesteps, cond, _ = inputs(model, batch=1)
    count, p = 3000, 0.2
    with torch.no_grad():
        conditional = model.denoiser(x, timesteps, cond, cond_drop_prob=0.0)
        unconditional = model.denoiser(x, timesteps, cond, cond_drop_prob=1.0)
        torch.manual_seed(123)
        out = model.denoiser(
            x.expand(count, -1, -1), timesteps.expand(count), cond.expand(count, -1, -1), cond_drop_prob=p
        )
    is_cond = (out - conditional).abs().amax(dim=(1, 2)) < 1e-5
    is_uncond = (out - unconditional).abs().amax(dim=(1, 2)) < 1e-5
    assert bool((is_cond ^ is_uncond).all()), "every sample is either fully conditional or fully unconditional"
    measured = is_uncond.float().mean().item()
    sigma = math.sqrt(p * (1 - p) / count)
    assert abs(measured - p) < 3 * sigma, (measured, p, sigma)


def test_keyframes_dropped_independently_of_audio():
    model = tiny_model("body", keyframe_stride=4)
    x, timesteps, cond, keyframes = inputs(model, batch=1)
    count, p = 2000, 0.5
    with torch.no_grad():
        both_kept = model.denoiser(x, timesteps, cond, keyframes, cond_drop_prob=0.0)
        both_dropped = model.denoiser(x, timesteps, cond, keyframes, cond_drop_prob=1.0)
        torch.manual_seed(7)
        out = model.denoiser(
            x.expand(count, -1, -1),
            timesteps.expand(count),
            cond.expand(count, -1, -1),
            keyframes.expand(count, -1, -1),
            cond_drop_prob=p,
        )
    matches_both = ((out - both_kept).abs().amax(dim=(1, 2)) < 1e-5) | (
        (out - both_dropped).abs().amax(dim=(1, 2)) < 1e-5
    )
    mixed = 1 - matches_both.float().mean().item()
    expected = 2 * p * (1 - p)  # one of the two independent draws kept, the other dropped
    sigma = math.sqrt(expected * (1 - expected) / count)
    assert abs(mixed - expected) < 3 * sigma, (mixed, expected)


@pytest.mark.parametrize("architecture", ["face", "body"])
def test_guidance_scale_zero_is_unconditional_and_one_is_conditional(architecture):
    model = tiny_model(architecture, keyframe_stride=4)
    x, timesteps, cond, keyframes = inputs(model)
    with torch.no_grad():
        conditional = model.denoiser(x, timesteps, cond, keyframes, cond_drop_prob=0.0)
        unconditional = model.denoiser(x, timesteps, cond, keyframes, cond_drop_prob=1.0)
        scale_zero = model.guided_x0(x, timesteps, cond, torch.zeros(2), keyframes)
        scale_one = model.guided_x0(x, timesteps, cond, torch.ones(2), keyframes)
    torch.testing.assert_close(scale_zero, unconditional, atol=1e-5, rtol=0)
    torch.testing.assert_close(scale_one, conditional, atol=1e-5, rtol=0)
    assert (conditional - unconditional).abs().max() > 1e-3


def test_batched_guidance_equals_two_passes_with_per_sample_scales():
    model = tiny_model("body", keyframe_stride=4)
    x, timesteps, cond, keyframes = inputs(model, batch=3)
    scales = torch.tensor([2.5, 1.0, 0.3])
    calls = []
    model.denoiser.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    with torch.no_grad():
        guided = model.guided_x0(x, timesteps, cond, scales, keyframes)
        conditional = model.denoiser(x, timesteps, cond, keyframes, cond_drop_prob=0.0)
        unconditional = model.denoiser(x, timesteps, cond, keyframes, cond_drop_prob=1.0)
    expected = unconditional + scales[:, None, None] * (conditional - unconditional)
    torch.testing.assert_close(guided, expected, atol=1e-5, rtol=0)
    # One forward of 3 conditional + 2 unconditional rows: the scale-1 sample skipped its unconditional half.
    assert calls[0] == 5


def test_generate_scale_one_runs_conditional_only():
    model = tiny_model("face")
    _, _, cond, _ = inputs(model)
    batch_sizes = []
    model.denoiser.register_forward_hook(lambda module, args, output: batch_sizes.append(args[0].shape[0]))
    model.generate(cond, num_frames=12, guidance_scale=1.0, num_inference_steps=4)
    assert batch_sizes == [2, 2, 2, 2]


def test_generate_is_reproducible_with_generator_and_latents():
    model = tiny_model("face")
    _, _, cond, _ = inputs(model)
    first = model.generate(cond, 12, num_inference_steps=4, generator=torch.Generator().manual_seed(3))
    second = model.generate(cond, 12, num_inference_steps=4, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    assert first.shape == (2, 12, 6)


# --- long conditioning ----------------------------------------------------------------------------------------


def test_long_conditioning_is_generated_in_blended_windows():
    # Windows of 4 keyframes x 4 frames = 16 frames overlapping by 4; conditioning at 2 features per frame.
    model = tiny_model("body", keyframe_stride=4, max_keyframes=4, window_overlap=4, max_cond_len=32)
    frames, cond_len = 40, 80
    _, _, cond, keyframes = inputs(model, batch=1, frames=frames, cond_len=cond_len)
    windows, overlap = model._windows(frames, cond_len)
    assert overlap == 4
    assert [(start, end) for start, end, _, _ in windows] == [(0, 16), (12, 28), (24, 40)]
    assert all(cond_end - cond_start <= 32 for _, _, cond_start, cond_end in windows)
    assert [(cond_start, cond_end) for _, _, cond_start, cond_end in windows] == [(0, 32), (24, 56), (48, 80)]

    latents = torch.randn(1, frames, 6, generator=torch.Generator().manual_seed(0))
    out = model.generate(cond, frames, guidance_scale=2.0, num_inference_steps=4, keyframes=keyframes, latents=latents)
    assert out.shape == (1, frames, 6) and torch.isfinite(out).all()
    # Frames covered by one window only are that window's sample; overlaps are a linear cross-fade of two.
    first = model.generate(
        cond[:, 0:32],
        16,
        guidance_scale=2.0,
        num_inference_steps=4,
        keyframes=keyframes[:, 0:4],
        latents=latents[:, 0:16],
    )
    second = model.generate(
        cond[:, 24:56],
        16,
        guidance_scale=2.0,
        num_inference_steps=4,
        keyframes=keyframes[:, 3:7],
        latents=latents[:, 12:28],
    )
    torch.testing.assert_close(out[:, :12], first[:, :12], atol=1e-5, rtol=0)
    ramp = torch.arange(1, 5, dtype=torch.float32) / 5
    blend = (first[:, 12:16] * ramp.flip(0)[None, :, None] + second[:, :4] * ramp[None, :, None]) / (
        ramp.flip(0) + ramp
    )[None, :, None]
    torch.testing.assert_close(out[:, 12:16], blend, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, 16:24], second[:, 4:12], atol=1e-5, rtol=0)


def test_denoiser_refuses_conditioning_longer_than_max_cond_len():
    model = tiny_model("face")
    x, timesteps, _, _ = inputs(model)
    with pytest.raises(InputError, match="max_cond_len=32; use generate"):
        model.denoiser(x, timesteps, torch.randn(2, 33, 8))


# --- diffusion schedule ---------------------------------------------------------------------------------------


def test_ddim_respacing_matches_upstream_stride():
    assert ddim_timesteps(1000, 10) == list(range(0, 1000, 100))
    assert ddim_timesteps(1000, 100)[:3] == [0, 10, 20]
    with pytest.raises(ValueError, match="integer stride"):
        ddim_timesteps(1000, 600)
    schedule = DiffusionSchedule.create("cosine", 1000)
    respaced = schedule.respaced(10)
    # Respacing keeps the cumulative noise level of every kept step.
    assert respaced.alphas_cumprod == pytest.approx(schedule.alphas_cumprod[::100], rel=1e-12)


# --- training -------------------------------------------------------------------------------------------------


def test_loss_ignores_padded_frames_and_adds_velocity_term():
    model = tiny_model("face", lambda_vel=2.0)
    motion = torch.randn(2, 12, 6)
    _, _, cond, _ = inputs(model)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 8:] = False
    noise, timesteps = torch.randn_like(motion), torch.tensor([5, 500])
    with torch.no_grad():
        out = model(motion, cond, mask=mask, timesteps=timesteps, noise=noise)
    # Masked x0 MSE: per sample over valid frames and all features, then the batch mean (upstream's masked_l2).
    expected_x0 = (((out.pred_x0 - motion) ** 2).mean(-1) * mask).sum(1) / mask.sum(1)
    assert out.x0_loss.item() == pytest.approx(expected_x0.mean().item(), rel=1e-5)
    velocity_error = ((out.pred_x0.diff(dim=1) - motion.diff(dim=1)) ** 2).mean(-1) * mask[:, 1:]
    expected_velocity = (velocity_error.sum(1) / mask[:, 1:].sum(1)).mean()
    assert out.velocity_loss.item() == pytest.approx(expected_velocity.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx((out.x0_loss + 2.0 * out.velocity_loss).item(), rel=1e-6)
    assert out.commitment_loss.item() == 0.0  # no quantizer


def test_training_drops_conditioning_at_config_rate_only_in_train_mode(monkeypatch):
    model = tiny_model("face", cond_drop_prob=0.3)
    seen = []
    original = model.denoiser.forward

    def spy(*args, **kwargs):
        seen.append(kwargs["cond_drop_prob"])
        return original(*args, **kwargs)

    monkeypatch.setattr(model.denoiser, "forward", spy)
    motion = torch.randn(2, 12, 6)
    _, _, cond, _ = inputs(model)
    model.train()
    model(motion, cond)
    model.eval()
    model(motion, cond)
    assert seen == [0.3, 0.0]


def test_trainer_trains_the_model(tmp_path):
    model = tiny_model("body", keyframe_stride=4)
    generator = torch.Generator().manual_seed(0)
    rows = [
        {
            "cond_features": torch.randn(20, 8, generator=generator),
            "motion": torch.randn(12, 6, generator=generator),
            "mask": torch.ones(12, dtype=torch.bool),
        }
        for _ in range(8)
    ]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    arguments = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=2,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        remove_unused_columns=False,
        learning_rate=1e-2,
    )
    trainer = Trainer(model=model.train(), args=arguments, train_dataset=rows)
    result = trainer.train()
    assert math.isfinite(result.training_loss)
    changed = [name for name, p in model.named_parameters() if not torch.equal(p, before[name])]
    assert "denoiser.final_layer.weight" in changed and "denoiser.keyframe_projection.weight" in changed


# --- persistence ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["face", "body"])
def test_save_load_round_trip_of_every_parameter_and_buffer(tmp_path, architecture):
    model = tiny_model(architecture, quantizer={"enabled": True, "ssl_dim": 8, "n_q": 2, "bins": 4})
    model.train()
    model(torch.randn(2, 12, 6), torch.randn(2, 20, 8))  # k-means init + an EMA step: non-trivial codebooks
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path, dtype=torch.float32)
    assert type(loaded) is CFGMotionModel
    # named_buffers() includes the non-persistent rotary frequencies that from_pretrained must refill.
    original = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    reloaded = {**dict(loaded.named_parameters()), **dict(loaded.named_buffers())}
    assert original.keys() == reloaded.keys()
    assert "denoiser.rotary.inv_freq" in reloaded and "voice_quantizer.quantizer.layers.1.codebook.embed" in reloaded
    for name, tensor in original.items():
        assert torch.equal(tensor, reloaded[name]), name
    model.eval()
    x, timesteps, cond, keyframes = inputs(model)
    with torch.no_grad():
        expected = model.denoiser(x, timesteps, cond, keyframes)
        torch.testing.assert_close(loaded.denoiser(x, timesteps, cond, keyframes), expected, atol=0, rtol=0)


def test_fresh_init_follows_flags():
    xavier = tiny_model("face")
    layer = xavier.denoiser.decoder_layers[0]
    assert torch.count_nonzero(layer.linear1.bias) == 0  # xavier-normal weights, zero bias (upstream init_weight)
    plain = tiny_model("face", init_xavier=False)
    assert torch.count_nonzero(plain.denoiser.decoder_layers[0].linear1.bias) > 0  # PyTorch's default init
    zero_film = tiny_model("face", init_adaln_zero=True)
    assert torch.count_nonzero(zero_film.denoiser.decoder_layers[0].film1.linear.weight) == 0
    assert zero_film.denoiser.null_cond_embed.std().item() == pytest.approx(1.0, abs=0.1)


# --- config ---------------------------------------------------------------------------------------------------


def test_config_defaults_per_architecture_and_round_trip(tmp_path):
    face, body = CFGMotionConfig(architecture="face"), CFGMotionConfig(architecture="body")
    assert (face.nfeats, face.latent_dim, face.cond_feature_dim, face.guidance_scale) == (256, 512, 2038, 10.0)
    assert (body.nfeats, body.latent_dim, body.cond_feature_dim, body.guidance_scale) == (104, 256, 1024, 2.0)
    assert (body.max_cond_len, body.keyframe_stride, body.fps, body.cond_drop_prob) == (1998, 30, 30, 0.2)
    assert (body.diffusion_steps, body.noise_schedule, body.num_inference_steps, body.ddim_eta) == (
        1000,
        "cosine",
        100,
        0.0,
    )
    config = CFGMotionConfig(architecture="face", guidance_scale=4.0, lambda_vel=1.5, max_cond_len=500)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is CFGMotionConfig
    assert (loaded.guidance_scale, loaded.lambda_vel, loaded.max_cond_len, loaded.nfeats) == (4.0, 1.5, 500, 256)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"architecture": "hands"}, "architecture must be one of"),
        ({"guidance_scale": -1.0}, "guidance_scale must be in \\[0, 100\\]"),
        ({"cond_drop_prob": 1.5}, "cond_drop_prob must be in"),
        ({"prediction_type": "eps"}, "prediction_type must be 'x0'"),
        ({"latent_dim": 30, "heads": 4}, "divisible by heads"),
        ({"quantizer": {"enabled": True, "ssl_dim": 768}}, "quantizer.ssl_dim"),
        ({"window_overlap": 45}, "multiple of keyframe_stride"),
    ],
)
def test_config_rejects_bad_values(fields, message):
    with pytest.raises((ValueError, StrictDataclassError), match=message):
        CFGMotionConfig(**fields)


# --- bad input ------------------------------------------------------------------------------------------------


def test_bad_input_raises_specific_errors():
    model = tiny_model("body", keyframe_stride=4)
    x, timesteps, cond, keyframes = inputs(model)
    with pytest.raises(InputError, match=r"feature width must equal the config's cond_feature_dim"):
        model.denoiser(x, timesteps, torch.randn(2, 20, 9), keyframes)
    with pytest.raises(InputError, match="batch sizes differ"):
        model.denoiser(x, timesteps, cond[:1], keyframes)
    with pytest.raises(InputError, match=r"mask must be \(batch, frames\) = \(2, 12\)"):
        model.denoiser(x, timesteps, cond, keyframes, mask=torch.ones(2, 11, dtype=torch.bool))
    with pytest.raises(InputError, match=r"mask must be \(batch, frames\) = \(2, 12\)"):
        model.generate(cond, 12, mask=torch.ones(2, 1, 12, 1, dtype=torch.bool), num_inference_steps=2)
    with pytest.raises(InputError, match=r"timesteps must be diffusion steps in \[0, 1000\), got \[10, 1000\]"):
        model.denoiser(x, torch.tensor([10, 1000]), cond, keyframes)
    with pytest.raises(InputError, match=r"keyframes must be .* = \(2, 3, 6\)"):
        model.denoiser(x, timesteps, cond, keyframes[:, :2])
    with pytest.raises(InputError, match="84 frames need more than max_keyframes=20"):
        model.denoiser(torch.randn(2, 84, 6), timesteps, cond)
    with pytest.raises(InputError, match="guidance_scale must be >= 0"):
        model.generate(cond, 12, guidance_scale=-0.5, num_inference_steps=2)
    with pytest.raises(InputError, match="guidance_scale must be finite, got \\[nan, nan\\]"):
        model.generate(cond, 12, guidance_scale=float("nan"), num_inference_steps=2)
    with pytest.raises(InputError, match="num_inference_steps must be >= 1, got 0"):
        model.generate(cond, 12, num_inference_steps=0)
    with pytest.raises(InputError, match="num_inference_steps=600 cannot be reached with an integer stride"):
        model.generate(cond, 12, num_inference_steps=600)
    with pytest.raises(InputError, match="guidance_scale has 3 values for a batch of 2"):
        model.generate(cond, 12, guidance_scale=[1.0, 2.0, 3.0], num_inference_steps=2)
    with pytest.raises(InputError, match=r"latents must have shape \(2, 12, 6\)"):
        model.generate(cond, 12, latents=torch.randn(2, 10, 6), num_inference_steps=2)
    with pytest.raises(InputError, match="no audio encoder"):
        model.generate(audio=torch.randn(1, 16000), num_inference_steps=2)
    with pytest.raises(InputError, match=r"motion must be \(batch, frames, 6\)"):
        model(torch.randn(2, 12, 5), cond)


def test_upstream_mask_layout_and_shared_timestep_are_accepted():
    # Upstream's (B, 1, 1, T) mask and one timestep for the whole batch give the same x0 as (B, T) and (B,).
    model = tiny_model("body", keyframe_stride=4)
    x, _, cond, keyframes = inputs(model)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 7:] = False
    keyframes[1, 2] = float("nan")  # a keyframe in padding is unknown: zeroed, never read
    with torch.no_grad():
        expected = model.denoiser(x, torch.tensor([300, 300]), cond, keyframes, mask=mask)
        upstream_layout = model.denoiser(x, 300, cond, keyframes, mask=mask[:, None, None, :])
    assert torch.isfinite(expected).all()
    torch.testing.assert_close(upstream_layout, expected, atol=0, rtol=0)
    loss = model(torch.randn(2, 12, 6), cond, mask=mask[:, None, None, :], timesteps=torch.tensor([1, 2])).loss
    assert torch.isfinite(loss)
