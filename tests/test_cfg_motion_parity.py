"""Parity of the CFG motion model with upstream audio2photoreal (fixtures a2p_pose_tiny / a2p_face_tiny), through the
`hf-tts convert a2p` CLI and a save -> AutoModel.from_pretrained round trip. Everything is compared in fp32."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import upstream_fixture
from safetensors.torch import load_file
from transformers import AutoModel

from hf_tts.cli import main
from hf_tts.convert.a2p import read_a2p_checkpoint
from hf_tts.errors import CheckpointMismatchError

FIXTURES = ["a2p_pose_tiny", "a2p_face_tiny"]


def _mdm_to_btc(tensor: torch.Tensor) -> torch.Tensor:
    """Upstream's (B, nfeats, 1, T) MDM layout -> (B, T, nfeats)."""
    return tensor.squeeze(2).transpose(1, 2)


@pytest.fixture(scope="module", params=FIXTURES)
def converted(request, tmp_path_factory):
    source = upstream_fixture(request.param)
    out = tmp_path_factory.mktemp("a2p") / "model"
    assert main(["convert", "a2p", str(source), "--out", str(out)]) == 0
    model = AutoModel.from_pretrained(out, dtype=torch.float32)
    cases = load_file(source / "cases.safetensors")
    return request.param, out, model, cases


def _inputs(cases):
    return (
        _mdm_to_btc(cases["x"]),
        cases["timesteps"],
        cases["cond_features"],
        cases.get("keyframes"),
        cases["mask"][:, 0, 0],
    )


def test_converted_folder(converted):
    name, out, model, _ = converted
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "hf_tts_cfg_motion"
    assert config["architecture"] == ("body" if "pose" in name else "face")
    assert (config["latent_dim"], config["layers"], config["heads"], config["ff_size"]) == (64, 2, 2, 128)
    assert model.config.use_keyframes == ("pose" in name)


@pytest.mark.parametrize("drop, reference", [(0.0, "out_cond"), (1.0, "out_uncond")])
def test_denoiser_matches_upstream(converted, drop, reference):
    # Denoiser x0 prediction with cond_drop_prob 0 (conditional) and 1 (null embeddings) vs upstream's outputs.
    _, _, model, cases = converted
    x, timesteps, cond, keyframes, mask = _inputs(cases)
    with torch.no_grad():
        out = model.denoiser(x, timesteps, cond, keyframes=keyframes, mask=mask, cond_drop_prob=drop)
    torch.testing.assert_close(out, cases[reference], atol=1e-5, rtol=0)


@pytest.mark.parametrize("scale", ["1.0", "2.5"])
def test_ddim10_matches_upstream(converted, scale):
    # 10-step DDIM (eta 0, cosine 1000 steps respaced, final x0 prediction) with the given noise and guidance scale.
    _, _, model, cases = converted
    _, _, cond, keyframes, mask = _inputs(cases)
    out = model.generate(
        cond,
        num_frames=120,
        guidance_scale=float(scale),
        num_inference_steps=10,
        keyframes=keyframes,
        mask=mask,
        latents=_mdm_to_btc(cases["ddim_noise"]),
    )
    torch.testing.assert_close(out, _mdm_to_btc(cases[f"ddim10_scale{scale}"]), atol=1e-4, rtol=0)


def test_encoder_keys_dropped_and_rotary_folded(tmp_path):
    source = upstream_fixture("a2p_face_tiny")
    state_dict = torch.load(source / "model000000001.pt", weights_only=True)
    state_dict["audio_model.feature_extractor.conv_layers.0.0.weight"] = torch.zeros(2, 1, 10)
    state_dict["audio_resampler.kernel"] = torch.zeros(1, 1, 3, 37)  # torchaudio Resample's persistent buffer
    state_dict["lip_model.project_output.weight"] = torch.zeros(3, 2)
    folder = tmp_path / "c1_face"
    folder.mkdir()
    shutil.copy(source / "args.json", folder / "args.json")
    torch.save(state_dict, folder / "model000000002.pt")
    checkpoint = read_a2p_checkpoint(folder)
    assert sorted(checkpoint.dropped_keys) == [
        "audio_model.feature_extractor.conv_layers.0.0.weight",
        "audio_resampler.kernel",
        "lip_model.project_output.weight",
    ]
    assert sorted(checkpoint.folded_rotary_keys) == [
        "cond_encoder.0.rotary.freqs",
        "cond_encoder.1.rotary.freqs",
        "rotary.freqs",
        "seqTransDecoder.stack.0.rotary.freqs",
        "seqTransDecoder.stack.1.rotary.freqs",
    ]
    assert not any("rotary" in key or "audio_model" in key for key in checkpoint.state_dict)


def test_non_standard_rotary_buffer_is_refused(tmp_path):
    source = upstream_fixture("a2p_pose_tiny")
    state_dict = torch.load(source / "model000000001.pt", weights_only=True)
    state_dict["seqTransDecoder.stack.1.rotary.freqs"] = state_dict["rotary.freqs"] * 2
    shutil.copy(source / "args.json", tmp_path / "args.json")
    torch.save(state_dict, tmp_path / "model000000001.pt")
    with pytest.raises(CheckpointMismatchError, match="seqTransDecoder.stack.1.rotary.freqs"):
        read_a2p_checkpoint(tmp_path)


def test_cli_bad_source(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    assert main(["convert", "a2p", str(tmp_path / "src"), "--out", str(tmp_path / "out")]) == 2
    assert "has no args.json" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _upstream_folder(tmp_path, name: str, args_update: dict, drop_args: tuple[str, ...] = ()):
    """A copy of a fixture in the layout real upstream runs leave: the frozen encoders' keys in the state dict and
    args.json as `json.dump(vars(args))` of upstream's parser (ignored `latent_dim` / `diffusion_steps` defaults)."""
    source = upstream_fixture(name)
    state_dict = torch.load(source / "model000000001.pt", weights_only=True)
    state_dict["audio_model.feature_extractor.conv_layers.0.0.weight"] = torch.zeros(2, 1, 10)
    state_dict["audio_resampler.kernel"] = torch.zeros(1, 1, 3, 37)
    args = json.loads((source / "args.json").read_text())
    for key in ("latent_dim", "ff_size", "nfeats", "cond_feature_dim", "predict", "sampling", *drop_args):
        args.pop(key, None)
    args.update(latent_dim=512, diffusion_steps=10, timestep_respacing="ddim100", max_seq_length=600)
    args.update(num_audio_layers=3, cond_mask_prob=0.2, lambda_vel=0.0, dataset="social", data_root="./dataset/PXB184/")
    args.update(args_update)
    folder = tmp_path / name
    folder.mkdir()
    (folder / "args.json").write_text(json.dumps(args))
    torch.save(state_dict, folder / "model000340000.pt")
    return folder, load_file(source / "cases.safetensors")


@pytest.mark.parametrize("name", FIXTURES)
def test_real_upstream_layout_converts_with_sizes_from_weights(tmp_path, capsys, name):
    # Denoiser (cond_drop_prob 0) of the converted real-layout folder vs upstream's output; args.json's
    # latent_dim=512 and diffusion_steps=10 are ignored as upstream ignores them, lambda_vel is read.
    folder, cases = _upstream_folder(tmp_path, name, {"lambda_vel": 2.0})
    out = tmp_path / "out"
    assert main(["convert", "a2p", str(folder), "--out", str(out)]) == 0
    assert "audio_resampler" in capsys.readouterr().out
    model = AutoModel.from_pretrained(out, dtype=torch.float32)
    config = model.config
    assert (config.latent_dim, config.diffusion_steps, config.lambda_vel, config.cond_drop_prob) == (64, 1000, 2.0, 0.2)
    x, timesteps, cond, keyframes, mask = _inputs(cases)
    with torch.no_grad():
        out_cond = model.denoiser(x, timesteps, cond, keyframes=keyframes, mask=mask)
    torch.testing.assert_close(out_cond, cases["out_cond"], atol=1e-5, rtol=0)


def test_args_json_flags_follow_upstream_parsing(tmp_path):
    # Missing keys take upstream's parser defaults / the weights' evidence; cond_mask_prob 0 means no guidance.
    folder, _ = _upstream_folder(tmp_path, "a2p_face_tiny", {"cond_mask_prob": 0.0}, drop_args=("data_format", "heads"))
    config = read_a2p_checkpoint(folder).config
    assert (config.architecture, config.heads) == ("face", 4)
    assert (config.cond_drop_prob, config.guidance_scale) == (0.0, 1.0)


@pytest.mark.parametrize(
    "args_update, message",
    [
        ({"unconstrained": True}, "unconstrained"),
        ({"cond_mode": "no_cond", "unconstrained": None}, "unconstrained"),
        ({"data_format": "face"}, "data_format='face' but the weights have the body keyframe branch"),
        ({"noise_schedule": "sqrt"}, "noise_schedule must be 'cosine' or 'linear'"),
        ({"not_rotary": True}, "not_rotary"),
    ],
)
def test_unsupported_args_json_variants_exit_2(tmp_path, capsys, args_update, message):
    folder, _ = _upstream_folder(tmp_path, "a2p_pose_tiny", args_update)
    out = tmp_path / "out"
    assert main(["convert", "a2p", str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["a2p_pose_tiny"]
