"""GPT-SoVITS voice quantizer front end: parity with upstream (fixture sovits_quantizer_tiny), the `.pth` export
reader, and `freeze_quantizer` (frozen in every sense vs. trainable) with real optimizer steps."""

from __future__ import annotations

import json
import shutil
import sys
import types

import pytest
import torch
import torch.distributed as dist
from conftest import upstream_fixture
from safetensors.torch import load_file
from transformers import AutoModel, Trainer, TrainingArguments

from hf_tts import CFGMotionConfig, CFGMotionModel
from hf_tts.convert.sovits import read_sovits_quantizer
from hf_tts.errors import CheckpointMismatchError
from hf_tts.layers.rvq import EuclideanCodebook
from hf_tts.models.cfg_motion.modeling_cfg_motion import VoiceQuantizer


@pytest.fixture(scope="module")
def sovits():
    folder = upstream_fixture("sovits_quantizer_tiny")
    config, state_dict = read_sovits_quantizer(folder / "s2G_frontend.pth")
    return folder, config, state_dict, load_file(folder / "cases.safetensors")


def test_reader_infers_the_quantizer_shape(sovits):
    _, config, state_dict, _ = sovits
    assert (config.ssl_dim, config.n_q, config.bins, config.semantic_frame_rate) == (32, 2, 16, "25hz")
    assert config.enabled
    assert "quantizer.layers.1.codebook.embed_avg" in state_dict


def test_quantizer_reproduces_upstream(sovits):
    # ssl_proj output, quantized features, codes and decoded codes vs GPT-SoVITS in eval mode (measured: identical).
    _, config, state_dict, cases = sovits
    quantizer = VoiceQuantizer(config)
    quantizer.load_state_dict(state_dict, strict=True)
    quantizer.eval()
    with torch.no_grad():
        projected = quantizer.ssl_proj(cases["ssl"])
        quantized, codes, commitment = quantizer(cases["ssl"])
        decoded = quantizer.decode(cases["codes"])
    torch.testing.assert_close(projected, cases["projected"], atol=1e-6, rtol=0)
    torch.testing.assert_close(quantized, cases["quantized"], atol=1e-6, rtol=0)
    assert torch.equal(codes, cases["codes"])
    assert torch.equal(quantizer.encode(cases["ssl"]), cases["codes"])
    torch.testing.assert_close(decoded, cases["decoded"], atol=1e-6, rtol=0)
    assert commitment.item() == 0.0


def test_versioned_export_header_is_restored_without_touching_the_file(sovits, tmp_path):
    folder, config, state_dict, _ = sovits
    tagged = tmp_path / "s2Gv2Pro.pth"
    shutil.copy(folder / "s2G_frontend.pth", tagged)
    with open(tagged, "r+b") as handle:
        handle.write(b"05")
    tagged_config, tagged_state = read_sovits_quantizer(tagged)
    assert tagged_config.to_dict() == config.to_dict()
    assert all(torch.equal(tagged_state[key], state_dict[key]) for key in state_dict)
    assert tagged.read_bytes()[:2] == b"05"


def test_fine_tuned_export_with_pickled_hparams_is_read_without_unpickling_code(sovits, tmp_path, monkeypatch):
    # GPT-SoVITS' savee(): fp16 weights plus `config` = a utils.HParams instance. weights_only loading accepts it
    # through the inert stand-in class; the quantizer read back equals the fp32 fixture's to fp16 rounding.
    folder, config, state_dict, _ = sovits
    upstream_utils = types.ModuleType("utils")

    class UpstreamHParams:
        def __init__(self, **fields):
            for key, value in fields.items():
                setattr(self, key, UpstreamHParams(**value) if isinstance(value, dict) else value)

    UpstreamHParams.__module__, UpstreamHParams.__qualname__ = "utils", "HParams"
    upstream_utils.HParams = UpstreamHParams
    monkeypatch.setitem(sys.modules, "utils", upstream_utils)
    weights = torch.load(folder / "s2G_frontend.pth", weights_only=True)["weight"]
    export = {
        "weight": {key: tensor.half() for key, tensor in weights.items()},
        "config": UpstreamHParams(model={"semantic_frame_rate": "25hz", "freeze_quantizer": True}),
        "info": "8epoch_96iteration",
    }
    torch.save(export, tmp_path / "voice_e8_s96.pth")
    monkeypatch.delitem(sys.modules, "utils")
    read_config, read_state = read_sovits_quantizer(tmp_path / "voice_e8_s96.pth")
    assert read_config.to_dict() == config.to_dict()
    for key, tensor in state_dict.items():
        assert torch.equal(read_state[key], tensor.half().float()), key


def test_reader_refuses_other_files(tmp_path):
    torch.save({"model": {"x": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointMismatchError, match="no 'weight' state dict"):
        read_sovits_quantizer(tmp_path / "other.pth")
    torch.save({"weight": {"enc_p.ssl_proj.weight": torch.zeros(4, 4, 1)}}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointMismatchError, match="'ssl_proj.weight' is missing"):
        read_sovits_quantizer(tmp_path / "partial.pth")


def motion_model(sovits, freeze: bool) -> CFGMotionModel:
    _, quantizer_config, state_dict, _ = sovits
    torch.manual_seed(0)
    config = CFGMotionConfig(
        architecture="face",
        nfeats=6,
        latent_dim=16,
        heads=2,
        layers=1,
        ff_size=32,
        cond_encoder_layers=0,
        cond_feature_dim=32,
        max_cond_len=32,
        quantizer=quantizer_config.to_dict(),
        freeze_quantizer=freeze,
    )
    model = CFGMotionModel(config)
    model.voice_quantizer.load_state_dict(state_dict, strict=True)
    return model


def batch(cases):
    return {
        "motion": torch.randn(2, 12, 6, generator=torch.Generator().manual_seed(0)),
        "cond_features": cases["ssl"].transpose(1, 2),
    }


def quantizer_state(model):
    return {name: tensor.detach().clone() for name, tensor in model.voice_quantizer.state_dict().items()}


def test_conditioning_path_uses_the_quantized_features(sovits):
    _, _, _, cases = sovits
    model = motion_model(sovits, freeze=True).eval()
    features, commitment, codes = model.encode_conditioning(cases["ssl"].transpose(1, 2))
    torch.testing.assert_close(features, cases["quantized"].transpose(1, 2), atol=1e-6, rtol=0)
    assert torch.equal(codes, cases["codes"]) and commitment.item() == 0.0


def test_frozen_quantizer_is_frozen_in_every_sense(sovits, tmp_path):
    assert not (dist.is_available() and dist.is_initialized())
    _, _, _, cases = sovits
    model = motion_model(sovits, freeze=True)
    model.train()
    assert not model.voice_quantizer.training, "stays in eval mode through model.train()"
    assert not any(p.requires_grad for p in model.voice_quantizer.parameters())
    grouped = {id(p) for group in model.optimizer_param_groups(weight_decay=0.1) for p in group["params"]}
    assert not grouped & {id(p) for p in model.voice_quantizer.parameters()}
    assert {id(p) for p in model.denoiser.parameters()} <= grouped
    before = quantizer_state(model)
    denoiser_before = model.denoiser.final_layer.weight.detach().clone()
    optimizer = torch.optim.AdamW(model.optimizer_param_groups(weight_decay=0.1), lr=1e-2)
    for _ in range(3):
        output = model(**batch(cases))
        assert output.commitment_loss.item() == 0.0
        features, _, _ = model.encode_conditioning(cases["ssl"].transpose(1, 2))
        assert not features.requires_grad, "runs under no_grad"
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
    assert all(p.grad is None for p in model.voice_quantizer.parameters())
    after = quantizer_state(model)
    assert all(torch.equal(before[name], after[name]) for name in before), "bit-identical after optimizer steps"
    assert not torch.equal(denoiser_before, model.denoiser.final_layer.weight)
    # Trainer's default optimizer leaves them out too (it keeps requires_grad parameters only).
    arguments = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], weight_decay=0.1)
    trainer_optimizer = Trainer(model=model, args=arguments).create_optimizer()
    trained = {id(p) for group in trainer_optimizer.param_groups for p in group["params"]}
    assert not trained & {id(p) for p in model.voice_quantizer.parameters()}


def test_trainable_quantizer_learns(sovits):
    assert not (dist.is_available() and dist.is_initialized())
    _, _, _, cases = sovits
    model = motion_model(sovits, freeze=False)
    model.train()
    assert model.voice_quantizer.training
    before = quantizer_state(model)
    output = model(**batch(cases))
    assert output.commitment_loss.item() > 0
    output.loss.backward()
    assert model.voice_quantizer.ssl_proj.weight.grad is not None
    assert model.voice_quantizer.ssl_proj.weight.grad.abs().sum() > 0, "gradients reach ssl_proj"
    after = quantizer_state(model)
    for level in (0, 1):
        key = f"quantizer.layers.{level}.codebook.embed_avg"
        assert not torch.equal(before[key], after[key]), "the codebook follows the data by EMA"
    grouped = {id(p) for group in model.optimizer_param_groups() for p in group["params"]}
    assert id(model.voice_quantizer.ssl_proj.weight) in grouped


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_flag_round_trips_through_config_json(sovits, tmp_path, freeze):
    model = motion_model(sovits, freeze=freeze)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["freeze_quantizer"] is freeze
    loaded = AutoModel.from_pretrained(tmp_path, dtype=torch.float32)
    assert loaded.config.freeze_quantizer is freeze
    assert loaded.voice_quantizer.ssl_proj.weight.requires_grad is not freeze
    loaded.train()
    assert loaded.voice_quantizer.training is not freeze


def test_codebook_kmeans_init_and_dead_code_replacement():
    torch.manual_seed(0)
    rows = torch.randn(64, 4)
    codebook = EuclideanCodebook(4, 8, kmeans_init=True, kmeans_iters=5, threshold_ema_dead_code=0).train()
    assert codebook.inited.item() == 0
    codebook(rows)
    assert codebook.inited.item() == 1 and codebook.embed.abs().sum() > 0
    # A threshold above every EMA cluster size expires every code: each becomes a vector of the batch.
    expiring = EuclideanCodebook(4, 8, kmeans_init=False, threshold_ema_dead_code=100).train()
    expiring(rows)
    distances = torch.cdist(expiring.embed, rows).min(dim=1).values
    assert torch.all(distances < 1e-6)
