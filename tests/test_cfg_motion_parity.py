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
    state_dict["lip_model.project_output.weight"] = torch.zeros(3, 2)
    folder = tmp_path / "c1_face"
    folder.mkdir()
    shutil.copy(source / "args.json", folder / "args.json")
    torch.save(state_dict, folder / "model000000002.pt")
    checkpoint = read_a2p_checkpoint(folder)
    assert sorted(checkpoint.dropped_keys) == [
        "audio_model.feature_extractor.conv_layers.0.0.weight",
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
    assert main(["convert", "a2p", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "has no args.json" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
