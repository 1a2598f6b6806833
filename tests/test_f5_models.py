"""F5TTSModel / E2TTSModel: fp32 parity with upstream F5-TTS 1.1.20 (backbone cases, sampling), save/load round
trips, the three initialisation cases, the training loss and batched sampling."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForTextToWaveform

from hf_tts import E2TTSConfig, E2TTSModel, F5TTSConfig, F5TTSModel
from hf_tts.errors import InputError
from hf_tts.layers.rotary import rotary_inv_freq
from tests.conftest import upstream_fixture

FAMILIES = {"DiT": (F5TTSConfig, F5TTSModel), "UNetT": (E2TTSConfig, E2TTSModel)}
FIXTURES = ["f5_v1_tiny", "f5_v0_tiny", "e2_tiny"]
BACKBONE_TOLERANCE = 1e-5
SAMPLE_TOLERANCE = 1e-4
TINY = dict(dim=32, depth=2, heads=2, dim_head=16, ff_mult=2, text_num_embeds=20, mel_dim=8)


def upstream_state_dict(path) -> dict[str, torch.Tensor]:
    """The released EMA file renamed to our layout: ema_model.transformer.X -> backbone.X (no bookkeeping keys,
    no rotary buffer)."""
    state = load_file(path / "model_ema.safetensors")
    return {
        key.replace("ema_model.transformer.", "backbone.", 1): value
        for key, value in state.items()
        if key.startswith("ema_model.transformer.") and not key.endswith("rotary_embed.inv_freq")
    }


def fixture_model(name: str):
    path = upstream_fixture(name)
    arch = json.loads((path / "arch.json").read_text())
    config_class, model_class = FAMILIES[arch["backbone"]]
    model = model_class(config_class(**arch["arch"])).eval()
    model.load_state_dict(upstream_state_dict(path), strict=True)
    cases = load_file(path / "cases.safetensors")
    return model, cases, json.loads((path / "cases.json").read_text())


@pytest.fixture(scope="module", params=FIXTURES)
def loaded(request):
    return fixture_model(request.param)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


# ------------------------------------------------------------------ parity


def test_state_dict_keys_and_rotary_buffer_match_upstream(loaded):
    model, _, _ = loaded
    path = upstream_fixture(_fixture_name(model))
    upstream = load_file(path / "model_ema.safetensors")
    assert set(model.state_dict()) == set(upstream_state_dict(path))
    # the rotary frequencies we compute equal the buffer upstream saved
    assert torch.equal(model.backbone.rotary_embed.inv_freq, upstream["ema_model.transformer.rotary_embed.inv_freq"])


def _fixture_name(model) -> str:
    if isinstance(model, E2TTSModel):
        return "e2_tiny"
    return "f5_v1_tiny" if model.config.text_mask_padding else "f5_v0_tiny"


def test_backbone_cases(loaded):
    """Upstream transformer(x, cond, text, time, mask, drop flags) outputs, batch 2 with a padded sample."""
    model, c, _ = loaded
    backbone = model.backbone
    with torch.no_grad():
        outputs = {
            "out_cond": backbone(c["x"], c["cond"], c["text"], c["time"], mask=c["mask"]),
            "out_drop_audio": backbone(c["x"], c["cond"], c["text"], c["time"], mask=c["mask"], drop_audio_cond=True),
            "out_drop_all": backbone(
                c["x"], c["cond"], c["text"], c["time"], mask=c["mask"], drop_audio_cond=True, drop_text=True
            ),
            "out_nomask": backbone(c["x"], c["cond"], c["text"], c["time"]),
            "out_cfg_infer": backbone(c["x"], c["cond"], c["text"], c["time"], mask=c["mask"], cfg_infer=True),
            # per-sample drop flags: sample 0 fully dropped, sample 1 conditional
            "per_sample": backbone(
                c["x"],
                c["cond"],
                c["text"],
                c["time"],
                mask=c["mask"],
                drop_audio_cond=torch.tensor([True, False]),
                drop_text=torch.tensor([True, False]),
            ),
        }
    for case in ("out_cond", "out_drop_audio", "out_drop_all", "out_nomask", "out_cfg_infer"):
        assert max_diff(outputs[case], c[case]) <= BACKBONE_TOLERANCE, case
    expected = torch.stack((c["out_drop_all"][0], c["out_cond"][1]))
    assert max_diff(outputs["per_sample"], expected) <= BACKBONE_TOLERANCE


def test_mel_spec_of_the_model(loaded):
    model, c, _ = loaded
    assert max_diff(model.mel_spec(c["ref_wave"]), c["ref_mel"]) <= 2e-5  # see tests/test_mel.py for why not 1e-5


@pytest.mark.parametrize("case", ["sample_euler8", "sample_epss16", "sample_nocfg4", "sample_midpoint6"])
def test_sample_cases(loaded, case):
    """CFM.sample(ref_wave, sample_text, duration, ...) with the upstream noise injected and with the same seed."""
    model, c, meta = loaded
    settings = meta["sample_settings"][case]
    kwargs = dict(
        steps=settings["steps"],
        cfg_strength=settings["cfg_strength"],
        sway_sampling_coef=settings["sway_sampling_coef"],
        method=settings["method"],
    )
    duration = meta["sample_duration"]
    with_latents = model.sample(c["ref_wave"], c["sample_text"], duration, latents=c[f"{case}_y0"], **kwargs)
    with_seed = model.sample(c["ref_wave"], c["sample_text"], duration, seed=meta["sample_seed"][case], **kwargs)
    assert max_diff(with_latents, c[case]) <= SAMPLE_TOLERANCE
    assert max_diff(with_seed, c[case]) <= SAMPLE_TOLERANCE


def test_sampling_is_exact_given_upstream_mel(loaded):
    """With upstream's own mel as the prompt (no filterbank rounding), CFG + EPSS + midpoint match to 1e-5."""
    model, c, meta = loaded
    out = model.sample(
        c["ref_mel"].transpose(1, 2),
        c["sample_text"],
        meta["sample_duration"],
        steps=6,
        cfg_strength=2.0,
        sway_sampling_coef=-1.0,
        method="midpoint",
        latents=c["sample_midpoint6_y0"],
    )
    assert max_diff(out, c["sample_midpoint6"]) <= BACKBONE_TOLERANCE


def test_sample_uses_config_defaults_and_reports_progress():
    model, c, meta = fixture_model("f5_v1_tiny")
    model.config.steps, model.config.cfg_strength, model.config.sway_sampling_coef = 8, 2.0, -1.0
    model.config.ode_method, model.config.use_epss = "euler", True
    calls = []
    model.train()  # sampling turns dropout off for the solve and restores the mode
    out = model.sample(
        c["ref_wave"],
        c["sample_text"],
        meta["sample_duration"],
        latents=c["sample_euler8_y0"],
        progress_callback=lambda i, n: calls.append((i, n)),
    )
    assert max_diff(out, c["sample_euler8"]) <= SAMPLE_TOLERANCE
    assert calls == [(i, 8) for i in range(8)]
    assert model.training
    assert torch.is_inference(out)


@pytest.mark.parametrize("name", ["f5_v1_tiny", "f5_v0_tiny", "e2_tiny"])
def test_isolated_batch_sampling_equals_per_sample_sampling(name):
    """Two prompts of different lengths and durations in one `isolate_samples` batch equal each sampled alone with
    the same latents. The text blocks' GRN gains are made large so that any leak of padding would show."""
    model, c, _ = fixture_model(name)
    with torch.no_grad():
        for module_name, parameter in model.named_parameters():
            if ".grn." in module_name:
                parameter.normal_(0, 1.0)
    prompt = c["ref_mel"].transpose(1, 2)  # (1, 94, 100)
    lens = torch.tensor([60, 94])
    durations = torch.tensor([110, 150])
    text = torch.full((2, 35), -1, dtype=torch.long)
    text[0, :20] = c["sample_text"][0, :20]
    text[1] = c["sample_text"][0]
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 150, 100, generator=generator)
    settings = dict(steps=4, cfg_strength=2.0, sway_sampling_coef=-1.0)
    batch_inputs = (prompt.expand(2, -1, -1), text, durations)

    isolated = model.sample(*batch_inputs, lens=lens, latents=latents, isolate_samples=True, **settings)
    shared = model.sample(*batch_inputs, lens=lens, latents=latents, **settings)  # upstream's batch semantics
    assert isolated.shape == (2, 150, 100)
    frames = int(durations[0])
    alone = model.sample(prompt[:, : int(lens[0])], text[:1, :20], frames, latents=latents[:1, :frames], **settings)
    assert max_diff(isolated[0, :frames], alone[0]) <= SAMPLE_TOLERANCE
    # without isolation the short sample sees the batch's padding (as upstream's batch does), so it differs
    assert max_diff(shared[0, :frames], alone[0]) > 1e-3
    frames = int(durations[1])
    alone = model.sample(prompt, text[1:], frames, latents=latents[1:, :frames], **settings)
    assert max_diff(isolated[1, :frames], alone[0]) <= SAMPLE_TOLERANCE


def test_sample_input_errors():
    model = F5TTSModel(F5TTSConfig(conv_layers=1, text_dim=16, **TINY))
    text = torch.tensor([[1, 2, 3]])
    with pytest.raises(InputError, match=r"cond must be a waveform \(batch, samples\) or a mel"):
        model.sample(torch.zeros(1, 10, 5), text, 20)
    with pytest.raises(InputError, match=r"latents must have shape \(1, >= 20, 8\)"):
        model.sample(torch.zeros(1, 10, 8), text, 20, latents=torch.zeros(1, 12, 8))
    with pytest.raises(InputError, match="text has batch size 1 but cond has 2"):
        model.sample(torch.zeros(2, 10, 8), text, 20)
    with pytest.raises(InputError, match="method must be one of euler, midpoint"):
        model.sample(torch.zeros(1, 10, 8), text, 20, steps=2, method="rk4")


# ------------------------------------------------------------------ save / load / registration


@pytest.mark.parametrize("name", ["f5_v1_tiny", "e2_tiny"])
def test_save_and_from_pretrained_round_trip(tmp_path, name):
    model, c, _ = fixture_model(name)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert set(saved) == set(model.state_dict())  # no non-persistent buffer is saved
    for auto_class in (AutoModel, AutoModelForTextToWaveform):
        reloaded = auto_class.from_pretrained(tmp_path, dtype=torch.float32).eval()
        assert type(reloaded) is type(model)
        for key, value in model.state_dict().items():
            assert torch.equal(reloaded.state_dict()[key], value), key
        buffers = dict(reloaded.named_buffers())
        for key, value in model.named_buffers():  # rotary inv_freq, mel window and filterbank are refilled
            assert torch.equal(buffers[key], value), key
        with torch.no_grad():
            args = (c["x"], c["cond"], c["text"], c["time"])
            assert torch.equal(reloaded.backbone(*args, mask=c["mask"]), model.backbone(*args, mask=c["mask"]))
    assert isinstance(AutoConfig.from_pretrained(tmp_path), type(model.config))


# ------------------------------------------------------------------ initialisation

ZERO_INIT_F5 = ("attn_norm.linear.", "norm_out.linear.", "proj_out.")


def _zero_init_keys(model) -> list[str]:
    prefixes = ZERO_INIT_F5 if isinstance(model, F5TTSModel) else ("proj_out.",)
    return [key for key in model.state_dict() if any(prefix in key for prefix in prefixes)]


def _tiny(model_class, **overrides):
    config_class = F5TTSConfig if model_class is F5TTSModel else E2TTSConfig
    extra = dict(conv_layers=1, text_dim=16) if model_class is F5TTSModel else {}
    return model_class(config_class(**TINY, **extra, **overrides))


@pytest.mark.parametrize("model_class", [F5TTSModel, E2TTSModel])
def test_fresh_model_init(model_class):
    zero = _tiny(model_class, init_adaln_zero=True)
    keys = _zero_init_keys(zero)
    assert keys and all(zero.state_dict()[key].abs().max() == 0 for key in keys)
    assert zero.state_dict()["backbone.time_embed.time_mlp.0.weight"].abs().max() > 0
    default = _tiny(model_class, init_adaln_zero=False)
    for key in keys:
        value = default.state_dict()[key]
        assert value.abs().max() > 0, key
        if key.endswith("weight"):  # PyTorch's default Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            assert value.abs().max() <= 1 / math.sqrt(value.shape[1]), key


@pytest.mark.parametrize("init_adaln_zero", [True, False])
def test_missing_keys_init_and_loaded_keys_untouched(tmp_path, init_adaln_zero):
    source = _tiny(F5TTSModel, init_adaln_zero=False)
    with torch.no_grad():
        for parameter in source.parameters():
            parameter.add_(0.5)  # loaded values far from any init
    state = source.state_dict()
    missing = _zero_init_keys(source)
    source.config.init_adaln_zero = init_adaln_zero
    source.save_pretrained(tmp_path, state_dict={k: v for k, v in state.items() if k not in missing})
    # the public path: F5TTSModel.from_pretrained (its folder check lets missing zero-init keys through)
    loaded, info = F5TTSModel.from_pretrained(tmp_path, dtype=torch.float32, output_loading_info=True)
    assert type(loaded) is F5TTSModel
    assert sorted(info["missing_keys"]) == sorted(missing)
    for key, value in loaded.state_dict().items():
        if key in missing:
            is_zero = value.abs().max().item() == 0
            assert is_zero == init_adaln_zero, key
            if not init_adaln_zero and key.endswith("weight"):
                assert value.abs().max() <= 1 / math.sqrt(value.shape[1]), key
        else:
            assert torch.equal(value, state[key]), key


# ------------------------------------------------------------------ training


@pytest.mark.parametrize("model_class", [F5TTSModel, E2TTSModel])
def test_forward_loss_is_finite_and_differentiable(model_class):
    model = _tiny(model_class, init_adaln_zero=False).train()
    torch.manual_seed(0)
    mel = torch.randn(3, 30, 8)
    text = torch.tensor([[1, 2, 3, 4], [5, 6, -1, -1], [7, -1, -1, -1]])
    output = model(mel, text, mel_lengths=torch.tensor([30, 24, 17]))
    assert output[0] is output.loss and torch.isfinite(output.loss)
    assert output.prediction.shape == (3, 30, 8) and output.span_mask.shape == (3, 30)
    assert not output.span_mask[2, 17:].any()  # the loss never covers padding
    output.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    loss, prediction, span_mask = model(mel, text, return_dict=False)
    assert loss.ndim == 0 and span_mask.dtype == torch.bool


def test_condition_drop_per_sample_or_per_batch():
    per_sample = _tiny(F5TTSModel, cfg_drop_per_sample=True, audio_drop_prob=0.3, cond_drop_prob=0.2)
    torch.manual_seed(0)
    drop_audio, drop_text = per_sample.draw_condition_drops(400)
    assert drop_audio.shape == drop_text.shape == (400,)
    assert 0 < drop_text.sum() < 400 and 0 < drop_audio.sum() < 400  # decisions differ inside one batch
    assert (drop_audio | ~drop_text).all()  # dropping text always drops the audio prompt too
    assert 0.35 < drop_audio.float().mean() < 0.55  # 1 - 0.7 * 0.8 = 0.44
    per_batch = _tiny(F5TTSModel, cfg_drop_per_sample=False)
    draws = [per_batch.draw_condition_drops(400) for _ in range(200)]
    assert all(isinstance(a, bool) and isinstance(t, bool) for a, t in draws)
    assert {a for a, _ in draws} == {True, False} and all(a or not t for a, t in draws)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = _tiny(F5TTSModel, init_adaln_zero=False, dropout=0.0).train()
    assert model.supports_gradient_checkpointing
    mel, text = torch.randn(2, 20, 8), torch.tensor([[1, 2, 3], [4, -1, -1]])

    def gradients():
        model.zero_grad()
        torch.manual_seed(1)
        model(mel, text).loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = gradients()
    model.activation_checkpointing_enable()
    assert all(block.gradient_checkpointing for block in model.backbone.transformer_blocks)
    checkpointed = gradients()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, checkpointed))


def test_rotary_stays_fp32_in_half_precision():
    model = _tiny(F5TTSModel).to(torch.bfloat16)
    cos, _ = model.backbone.rotary_embed(50)
    assert cos.dtype == torch.float32
    expected = torch.outer(torch.arange(50.0), rotary_inv_freq(16)).repeat_interleave(2, dim=-1).cos()
    assert torch.equal(cos, expected)


def test_half_precision_sampling_keeps_an_fp32_time_grid(monkeypatch):
    """In bf16, a 32-step sway grid would collapse its first steps onto t = 0 (cos(pi/2 t) rounds to 1); the sampler
    integrates over the fp32 grid and stays close to fp32 sampling."""
    import hf_tts.flow_matching as flow_matching

    assert not (torch.diff(flow_matching.time_grid(32, False, -1.0, dtype=torch.bfloat16)) > 0).all()
    grids = []
    solve = flow_matching.solve_ode
    monkeypatch.setattr(
        flow_matching, "solve_ode", lambda f, y0, grid, **kw: grids.append(grid) or solve(f, y0, grid, **kw)
    )
    model = _tiny(F5TTSModel).eval()
    cond, latents = torch.randn(1, 10, model.config.mel_dim), torch.randn(1, 30, model.config.mel_dim)
    options = {"steps": 32, "sway_sampling_coef": -1.0, "use_epss": False, "cfg_strength": 2.0}
    with torch.inference_mode():
        full = model.sample(cond, [[1, 2, 3]], 30, latents=latents, **options)
        half = model.to(torch.bfloat16).sample(cond.bfloat16(), [[1, 2, 3]], 30, latents=latents.bfloat16(), **options)
    assert half.dtype == torch.bfloat16
    assert grids[1].dtype == torch.float32 and (torch.diff(grids[1]) > 0).all()
    assert torch.equal(grids[0], grids[1])
    assert (half.float() - full).abs().max() <= 0.05 * full.abs().max()
