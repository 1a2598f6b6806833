"""Upstream F5/E2 checkpoints -> save_pretrained folders: fixture parity, both layouts, EMA vs online, and every
mismatch / bad-input path (one line, exit 2, no output folder, inputs untouched)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

from hf_tts.cli import main
from hf_tts.convert.f5 import convert_f5_checkpoint, detect_family, load_upstream_f5_state_dict, resolve_arch
from hf_tts.errors import CheckpointMismatchError, InputError
from hf_tts.file_utils import sha256_file
from hf_tts.models.checkpoint_check import check_weight_shapes, expected_state_shapes
from hf_tts.models.e2.configuration_e2 import E2TTSConfig
from hf_tts.models.e2.modeling_e2 import E2TTSModel
from hf_tts.models.f5.configuration_f5 import F5TTSConfig
from hf_tts.models.f5.modeling_f5 import F5TTSModel
from hf_tts.tokenization_f5 import F5Tokenizer
from tests.conftest import upstream_fixture

FIXTURES = ["f5_v1_tiny", "f5_v0_tiny", "e2_tiny"]


def _convert(tmp_path, name, checkpoint, *extra):
    folder = upstream_fixture(name)
    out = tmp_path / f"{name}-{checkpoint}-{len(extra)}"
    argv = ["convert", "f5", str(folder / checkpoint), "--arch", str(folder / "arch.json")]
    code = main([*argv, "--vocab", str(upstream_fixture("f5_vocab.txt")), "--out", str(out), *extra])
    assert code == 0
    return out


def _backbone_outputs(model, cases):
    with torch.no_grad():
        args = (cases["x"], cases["cond"], cases["text"], cases["time"], cases["mask"])
        return model.backbone(*args), model.backbone(*args, drop_audio_cond=True, drop_text=True)


@pytest.mark.parametrize("name", FIXTURES)
def test_both_layouts_reproduce_upstream_outputs(tmp_path, name):
    # out_cond and out_drop_all of upstream's transformer, fp32, from the EMA .safetensors and the training .pt.
    cases = load_file(upstream_fixture(name) / "cases.safetensors")
    before = {p.name: sha256_file(p) for p in upstream_fixture(name).iterdir()}
    for checkpoint in ("model_ema.safetensors", "model_train.pt"):
        out = _convert(tmp_path, name, checkpoint)
        model = AutoModel.from_pretrained(out, dtype=torch.float32).eval()
        assert isinstance(model, E2TTSModel if name.startswith("e2") else F5TTSModel)
        out_cond, out_drop_all = _backbone_outputs(model, cases)
        torch.testing.assert_close(out_cond, cases["out_cond"], rtol=0, atol=1e-5)
        torch.testing.assert_close(out_drop_all, cases["out_drop_all"], rtol=0, atol=1e-5)
        tokenizer = AutoTokenizer.from_pretrained(out)
        assert isinstance(tokenizer, F5Tokenizer)
        assert torch.equal(
            tokenizer.encode_batch(json.loads((upstream_fixture(name) / "cases.json").read_text())["texts"]).ids,
            cases["text"],
        )
    assert {p.name: sha256_file(p) for p in upstream_fixture(name).iterdir()} == before


def test_online_weights_are_model_state_dict(tmp_path):
    # The fixture's online weights are EMA + 0.001: the converted tensors must differ from the EMA ones by exactly that.
    ema = load_file(_convert(tmp_path, "f5_v1_tiny", "model_train.pt") / "model.safetensors")
    online = load_file(_convert(tmp_path, "f5_v1_tiny", "model_train.pt", "--use-online-weights") / "model.safetensors")
    assert ema.keys() == online.keys()
    for key in ema:
        torch.testing.assert_close(online[key] - ema[key], torch.full_like(ema[key], 0.001), rtol=0, atol=1e-6)


def test_architecture_is_recorded_and_yaml_arch(tmp_path):
    folder = upstream_fixture("f5_v0_tiny")
    block = json.loads((folder / "arch.json").read_text())
    block.pop("upstream")
    block["arch"].pop("text_num_embeds")
    block["arch"].pop("mel_dim")
    block["arch"].update(attn_backend="torch", checkpoint_activations=False)
    yaml_path = tmp_path / "F5TTS_Tiny.yaml"
    yaml_path.write_text(yaml.safe_dump({"model": {"name": "F5TTS_Tiny", "tokenizer": "char", **block}}))
    out = convert_f5_checkpoint(
        folder / "model_ema.safetensors", yaml_path, upstream_fixture("f5_vocab.txt"), tmp_path / "o"
    )
    model = AutoModel.from_pretrained(out, dtype=torch.float32).eval()
    assert (model.config.architecture, model.config.text_mask_padding, model.config.pe_attn_head) == (
        "F5TTS_Tiny",
        False,
        1,
    )
    assert AutoTokenizer.from_pretrained(out).tokenizer_type == "char"
    cases = load_file(folder / "cases.safetensors")
    torch.testing.assert_close(_backbone_outputs(model, cases)[0], cases["out_cond"], rtol=0, atol=1e-5)
    assert resolve_arch("F5TTS_Base", text_num_embeds=10).architecture == "F5TTS_Base"
    assert resolve_arch("F5TTS_Base", text_num_embeds=10).text_num_embeds == 10


def test_load_state_dict_keys_and_family():
    state = load_upstream_f5_state_dict(upstream_fixture("e2_tiny") / "model_ema.safetensors")
    assert all(key.startswith("backbone.") for key in state)
    assert "backbone.layers.2.0.weight" in state and "backbone.rotary_embed.inv_freq" not in state
    assert detect_family(state) == "E2"
    assert detect_family(load_upstream_f5_state_dict(upstream_fixture("f5_v0_tiny") / "model_train.pt")) == "F5"


def _upstream_shapes(model_class, config):
    return {
        "transformer." + k.removeprefix("backbone."): v for k, v in expected_state_shapes(model_class, config).items()
    }


def _backbone_shapes(model_class, config):
    return expected_state_shapes(model_class, config)


@pytest.mark.parametrize(
    ("found", "arch", "message"),
    [
        (
            (E2TTSModel, E2TTSConfig.from_preset("E2TTS_Base")),
            "F5TTS_v1_Base",
            "this checkpoint is E2-TTS (UNetT) but --arch F5TTS_v1_Base is F5-TTS (DiT); use --arch E2TTS_Base",
        ),
        (
            (F5TTSModel, F5TTSConfig.from_preset("F5TTS_v1_Base")),
            "E2TTS_Base",
            "this checkpoint is F5-TTS (DiT) but --arch E2TTS_Base is E2-TTS (UNetT); use --arch F5TTS_v1_Base or "
            "F5TTS_Base (the weights cannot tell these apart",
        ),
        (
            (F5TTSModel, F5TTSConfig.from_preset("F5TTS_v1_Small")),
            "F5TTS_v1_Base",
            "use --arch F5TTS_v1_Small or F5TTS_Small",
        ),
        (
            (E2TTSModel, E2TTSConfig.from_preset("E2TTS_Small")),
            "E2TTS_Base",
            "dim 768, depth 20",
        ),
    ],
)
def test_released_size_mismatch_messages(found, arch, message):
    # Shapes only (meta device), so Base-sized checkpoints cost no memory.
    config = resolve_arch(arch)
    expected = _backbone_shapes(F5TTSModel if config.model_type == "hf_tts_f5" else E2TTSModel, config)
    with pytest.raises(CheckpointMismatchError) as error:
        check_weight_shapes(_backbone_shapes(*found), expected, config, arch_label=f"--arch {arch}")
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def _cli_error(tmp_path, capsys, argv):
    out = tmp_path / "out"
    code = main([*argv, "--out", str(out)])
    stderr = capsys.readouterr().err
    assert code == 2
    assert stderr.count("\n") == 1 and stderr.startswith("hf-tts convert: error: ")
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
    return stderr


def test_cli_error_paths(tmp_path, capsys):
    vocab = upstream_fixture("f5_vocab.txt")
    f5, e2 = upstream_fixture("f5_v1_tiny"), upstream_fixture("e2_tiny")
    hashes = {p: sha256_file(p) for p in (vocab, f5 / "model_ema.safetensors", e2 / "model_train.pt")}
    base = ["convert", "f5"]

    err = _cli_error(
        tmp_path,
        capsys,
        [*base, str(e2 / "model_ema.safetensors"), "--arch", str(f5 / "arch.json"), "--vocab", str(vocab)],
    )
    assert "this checkpoint is E2-TTS (UNetT) but --arch" in err and "is F5-TTS (DiT)" in err

    err = _cli_error(
        tmp_path,
        capsys,
        [*base, str(f5 / "model_ema.safetensors"), "--arch", str(e2 / "arch.json"), "--vocab", str(vocab)],
    )
    assert "this checkpoint is F5-TTS (DiT) but --arch" in err

    short_vocab = tmp_path / "short_vocab.txt"
    short_vocab.write_text(
        "".join(f"{t}\n" for t in vocab.read_text(encoding="utf-8").split("\n")[:2500]), encoding="utf-8"
    )
    arch = tmp_path / "arch.json"
    block = json.loads((f5 / "arch.json").read_text())
    block["arch"].pop("text_num_embeds")
    arch.write_text(json.dumps(block))
    err = _cli_error(
        tmp_path, capsys, [*base, str(f5 / "model_ema.safetensors"), "--arch", str(arch), "--vocab", str(short_vocab)]
    )
    assert "vocab" in err and "does not match the checkpoint" in err and "2500 tokens" in err and "45 more" in err

    err = _cli_error(
        tmp_path,
        capsys,
        [*base, str(f5 / "model_ema.safetensors"), "--arch", str(f5 / "arch.json"), "--vocab", str(short_vocab)],
    )
    assert "text_num_embeds 2545 but the vocab has 2500 tokens" in err

    err = _cli_error(
        tmp_path, capsys, [*base, str(f5 / "model_ema.safetensors"), "--arch", "F5TTS_v1_Base", "--vocab", str(vocab)]
    )
    assert "no preset has this size (dim 64, depth 2)" in err

    err = _cli_error(
        tmp_path, capsys, [*base, str(f5 / "model_ema.safetensors"), "--arch", "F5TTS_v9", "--vocab", str(vocab)]
    )
    assert "'F5TTS_v9' is neither a preset" in err

    err = _cli_error(
        tmp_path, capsys, [*base, str(tmp_path / "missing.pt"), "--arch", str(f5 / "arch.json"), "--vocab", str(vocab)]
    )
    assert "missing.pt does not exist" in err

    err = _cli_error(
        tmp_path,
        capsys,
        [
            *base,
            str(f5 / "model_ema.safetensors"),
            "--arch",
            str(f5 / "arch.json"),
            "--vocab",
            str(tmp_path / "nope.txt"),
        ],
    )
    assert "nope.txt does not exist" in err

    err = _cli_error(
        tmp_path,
        capsys,
        [
            *base,
            str(f5 / "model_ema.safetensors"),
            "--arch",
            str(f5 / "arch.json"),
            "--vocab",
            str(vocab),
            "--use-online-weights",
        ],
    )
    assert "holds only EMA weights" in err

    pickled = tmp_path / "pickled.pt"
    torch.save({"ema_model_state_dict": {}, "args": argparse_namespace()}, pickled)
    err = _cli_error(tmp_path, capsys, [*base, str(pickled), "--arch", str(f5 / "arch.json"), "--vocab", str(vocab)])
    assert "unpickling" in err

    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model:\n  name: X\n")
    err = _cli_error(
        tmp_path, capsys, [*base, str(f5 / "model_ema.safetensors"), "--arch", str(bad_yaml), "--vocab", str(vocab)]
    )
    assert "no upstream model block" in err

    (tmp_path / "out").mkdir()
    code = main(
        [
            *base,
            str(f5 / "model_ema.safetensors"),
            "--arch",
            str(f5 / "arch.json"),
            "--vocab",
            str(vocab),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2 and "already exists" in capsys.readouterr().err
    assert list((tmp_path / "out").iterdir()) == []

    assert {p: sha256_file(p) for p in hashes} == hashes


def argparse_namespace():
    import argparse

    return argparse.Namespace(lr=1.0)


def test_from_pretrained_refuses_weights_that_do_not_fit_the_config(tmp_path):
    out = _convert(tmp_path, "e2_tiny", "model_ema.safetensors")
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "depth": 6}))
    with pytest.raises(CheckpointMismatchError, match=r"depth 4 .* builds dim 64, depth 6"):
        AutoModel.from_pretrained(out)
    (out / "config.json").write_text(json.dumps({**config, "text_num_embeds": 2000}))
    with pytest.raises(CheckpointMismatchError, match="does not match the checkpoint: it has 2000 tokens"):
        AutoModel.from_pretrained(out)


def test_python_api_errors(tmp_path):
    with pytest.raises(InputError, match="backbone 'MMDiT' is not supported"):
        arch = tmp_path / "mm.json"
        arch.write_text(json.dumps({"backbone": "MMDiT", "arch": {"dim": 8}}))
        resolve_arch(arch)
    with pytest.raises(InputError, match="unknown arch key"):
        arch.write_text(json.dumps({"backbone": "DiT", "arch": {"dim": 8, "nonsense": 1}}))
        resolve_arch(arch)
    with pytest.raises(InputError, match="depth"):
        arch.write_text(json.dumps({"backbone": "UNetT", "arch": {"depth": 3}}))
        resolve_arch(arch)
