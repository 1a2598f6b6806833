"""Converters, fine-tuning and push under hostile or broken input (issue 12): output placements that would destroy
an input, validation before any staging folder exists, NaN/int weights, damaged files, bad args.json types, size
bombs in tiny configs, push targets and numeric options checked before any work. Each case builds the exact input
the issue describes and checks for exit 2 with one stderr line (or an InputError) and inputs left unchanged."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_tts.cli import main
from hf_tts.convert.a2p import read_a2p_checkpoint
from hf_tts.convert.f5 import convert_f5_checkpoint, load_upstream_f5_state_dict
from hf_tts.errors import InputError
from tests.cli_utils import cli, one_error_line, tree_digest
from tests.conftest import upstream_fixture


@pytest.fixture
def f5_inputs(tmp_path):
    """A writable copy of the f5_v1_tiny checkpoint and its arch / vocab, in `tmp_path/ck`."""
    source = upstream_fixture("f5_v1_tiny")
    folder = tmp_path / "ck"
    folder.mkdir()
    shutil.copy(source / "model_ema.safetensors", folder / "x.safetensors")
    shutil.copy(source / "arch.json", folder / "arch.json")
    shutil.copy(upstream_fixture("f5_vocab.txt"), folder / "vocab.txt")
    return folder


def convert_f5(folder: Path, checkpoint: Path, *extra) -> int:
    return cli("convert", "f5", checkpoint, "--arch", folder / "arch.json", "--vocab", folder / "vocab.txt", *extra)


def no_staging_left(folder: Path) -> bool:
    return not [entry for entry in os.listdir(folder) if ".hf-tts-" in entry or ".tmp-" in entry]


# ---------------------------------------------------------------- output placements


@pytest.mark.parametrize(
    "out, message",
    [
        ("", "the output path is empty"),
        ("{ck}", "contains the input"),
        ("{ck}/x.safetensors", "is the input"),
        ("{ck}/x.safetensors/sub", "lies inside the input"),
    ],
)
def test_convert_f5_refuses_outputs_that_would_destroy_inputs(f5_inputs, capsys, monkeypatch, out, message):
    monkeypatch.chdir(f5_inputs.parent)
    before = tree_digest(f5_inputs)
    code = convert_f5(f5_inputs, f5_inputs / "x.safetensors", "--out", out.format(ck=f5_inputs), "--overwrite")
    assert code == 2 and message in one_error_line(capsys)
    assert tree_digest(f5_inputs) == before and no_staging_left(f5_inputs.parent)


def test_convert_f5_refuses_the_current_folder(f5_inputs, capsys, monkeypatch):
    work = f5_inputs.parent / "work"
    work.mkdir()
    (work / "keep.txt").write_text("mine")
    monkeypatch.chdir(work)
    assert convert_f5(f5_inputs, f5_inputs / "x.safetensors", "--out", ".", "--overwrite") == 2
    assert "current folder" in one_error_line(capsys)
    assert (work / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("family", ["vocos", "a2p"])
def test_convert_vocos_and_a2p_refuse_outputs_inside_their_source(tmp_path, capsys, family):
    source = tmp_path / "src"
    shutil.copytree(upstream_fixture("vocos_tiny" if family == "vocos" else "a2p_face_tiny"), source)
    before = tree_digest(source)
    assert cli("convert", family, source, "--out", source / "converted") == 2
    assert "lies inside the input" in one_error_line(capsys)
    assert cli("convert", family, source, "--out", source, "--overwrite") == 2
    assert "is the input" in one_error_line(capsys)
    assert tree_digest(source) == before


def test_convert_writes_files_with_ordinary_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        assert cli("convert", "vocos", upstream_fixture("vocos_tiny"), "--out", tmp_path / "v") == 0
        assert cli("convert", "a2p", upstream_fixture("a2p_face_tiny"), "--out", tmp_path / "a") == 0
    finally:
        os.umask(previous)
    for folder in (tmp_path / "v", tmp_path / "a"):
        modes = {path.name: path.stat().st_mode & 0o777 for path in folder.iterdir()}
        assert set(modes) >= {"README.md", "model.safetensors", "config.json"}
        assert set(modes.values()) == {0o644}, modes
        assert folder.stat().st_mode & 0o777 == 0o755


# ---------------------------------------------------------------- weights


def _edited_checkpoint(folder: Path, edit) -> Path:
    state = load_file(folder / "x.safetensors")
    key = next(key for key, tensor in state.items() if key.endswith("attn.to_q.weight"))
    state[key] = edit(state[key].clone())
    save_file(state, folder / "edited.safetensors")
    return folder / "edited.safetensors"


def test_nan_weights_are_refused_before_staging(f5_inputs, tmp_path, capsys, monkeypatch):
    import hf_tts.convert.f5 as f5_module

    def poisoned(tensor):
        tensor.view(-1)[3] = float("nan")
        return tensor

    staged = []
    original = f5_module.atomic_output_dir
    monkeypatch.setattr(f5_module, "atomic_output_dir", lambda *a, **k: staged.append(a) or original(*a, **k))
    checkpoint = _edited_checkpoint(f5_inputs, poisoned)
    assert convert_f5(f5_inputs, checkpoint, "--out", tmp_path / "out") == 2
    error = one_error_line(capsys)
    assert "edited.safetensors: weight backbone.transformer_blocks.0.attn.to_q.weight contains 1 NaN" in error
    assert staged == [] and not (tmp_path / "out").exists() and no_staging_left(tmp_path)


def test_int_weights_are_refused(f5_inputs, tmp_path, capsys):
    checkpoint = _edited_checkpoint(f5_inputs, lambda tensor: tensor.to(torch.int32))
    assert convert_f5(f5_inputs, checkpoint, "--out", tmp_path / "out") == 2
    assert "has dtype torch.int32, expected a floating-point tensor" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_a_pt_whose_top_level_is_not_a_dict_is_refused(f5_inputs, tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(InputError, match="list.pt holds a list, not an upstream checkpoint dict"):
        load_upstream_f5_state_dict(tmp_path / "list.pt")


def test_an_empty_pt_is_an_input_error(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(InputError, match="empty.pt"):
        load_upstream_f5_state_dict(tmp_path / "empty.pt")


def test_a_damaged_safetensors_file_is_named(f5_inputs, tmp_path, capsys):
    data = (f5_inputs / "x.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    assert convert_f5(f5_inputs, tmp_path / "cut.safetensors", "--out", tmp_path / "out") == 2
    assert "cut.safetensors" in one_error_line(capsys)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo unpickled",))


def test_a_malicious_pickle_is_refused_as_needing_unpickling(tmp_path):
    torch.save({"model_state_dict": _RunsCode()}, tmp_path / "evil.pt")
    with pytest.raises(InputError, match="unpickling") as caught:
        load_upstream_f5_state_dict(tmp_path / "evil.pt")
    assert "damaged" not in str(caught.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_checkpoint_is_reported_as_such(f5_inputs, tmp_path, capsys):
    (f5_inputs / "x.safetensors").chmod(0)
    assert convert_f5(f5_inputs, f5_inputs / "x.safetensors", "--out", tmp_path / "out") == 2
    error = one_error_line(capsys)
    assert "ermission denied" in error and "No such file" not in error


def test_huge_arch_file_is_refused_before_the_checkpoint_is_read(f5_inputs, tmp_path, capsys, monkeypatch):
    import hf_tts.convert.f5 as f5_module

    arch = json.loads((f5_inputs / "arch.json").read_text())
    arch["arch"]["depth"] = 1_000_000
    (tmp_path / "big.json").write_text(json.dumps(arch))
    monkeypatch.setattr(f5_module, "_read_checkpoint", lambda *a: pytest.fail("the checkpoint was read"))
    code = cli(
        "convert", "f5", f5_inputs / "x.safetensors", "--arch", tmp_path / "big.json", "--vocab",
        f5_inputs / "vocab.txt", "--out", tmp_path / "out",
    )  # fmt: skip
    assert code == 2
    assert "big.json: this F5TTSConfig describes a model of" in one_error_line(capsys)


def test_allow_large_lifts_the_limit_on_the_python_api(f5_inputs, tmp_path, monkeypatch):
    import hf_tts.modeling_utils as modeling_utils

    monkeypatch.setattr(modeling_utils, "MAX_MODEL_PARAMETERS", 1000)  # the tiny fixture is "large" now
    args = (f5_inputs / "x.safetensors", f5_inputs / "arch.json", f5_inputs / "vocab.txt")
    with pytest.raises(InputError, match="above the"):
        convert_f5_checkpoint(*args, tmp_path / "refused")
    assert convert_f5_checkpoint(*args, tmp_path / "allowed", allow_large=True).is_dir()
    assert cli("convert", "vocos", upstream_fixture("vocos_tiny"), "--out", tmp_path / "v") == 2
    assert cli("convert", "vocos", upstream_fixture("vocos_tiny"), "--out", tmp_path / "v", "--allow-large") == 0


def test_vocos_yaml_with_a_huge_dim_is_refused_before_allocation(tmp_path, capsys, monkeypatch):
    import hf_tts.convert.vocos as vocos_module

    source = tmp_path / "src"
    shutil.copytree(upstream_fixture("vocos_tiny"), source)
    # charactr/vocos-mel-24khz's sizes (intermediate 1536, 8 layers) with `dim: 60000`: 1.58e9 parameters.
    text = (source / "config.yaml").read_text().replace("dim: 64", "dim: 60000")
    text = text.replace("intermediate_dim: 192", "intermediate_dim: 1536").replace("num_layers: 2", "num_layers: 8")
    (source / "config.yaml").write_text(text)
    monkeypatch.setattr(vocos_module, "load_torch_checkpoint", lambda *a: pytest.fail("the weights were read"))
    assert cli("convert", "vocos", source, "--out", tmp_path / "out") == 2
    assert "config.yaml: this VocosConfig describes a model of 1.58e+09" in one_error_line(capsys)


def test_vocos_yaml_alias_bomb_is_refused(tmp_path, capsys):
    source = tmp_path / "src"
    shutil.copytree(upstream_fixture("vocos_tiny"), source)
    bomb = 'a: &a ["x","x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: [*b,*b,*b,*b,*b]\n'
    (source / "config.yaml").write_text(bomb)
    assert cli("convert", "vocos", source, "--out", tmp_path / "out") == 2
    assert "anchors and aliases" in one_error_line(capsys)


# ---------------------------------------------------------------- a2p args.json


def _a2p_source(tmp_path: Path, **changes) -> Path:
    source = tmp_path / "a2p"
    shutil.copytree(upstream_fixture("a2p_face_tiny"), source)
    args = json.loads((source / "args.json").read_text())
    args.update(changes)
    (source / "args.json").write_text(json.dumps(args))
    return source


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"heads": 0}, "heads must be at least 1, got 0"),
        ({"heads": "4"}, 'heads must be an integer, got "4"'),
        ({"heads": [4]}, "heads must be an integer, got [4]"),
        ({"heads": None}, "heads must be an integer, got null"),
        ({"heads": 4.0}, "heads must be an integer, got 4.0"),
        ({"not_rotary": "false"}, 'not_rotary must be true/false, got "false"'),
        ({"unconstrained": 0}, "unconstrained must be true/false, got 0"),
        ({"lambda_vel": "0.1"}, 'lambda_vel must be an integer or a number, got "0.1"'),
        ({"cond_mask_prob": True}, "cond_mask_prob must be an integer or a number, got true"),
        ({"data_format": 5}, "data_format must be a string, got 5"),
        ({"noise_schedule": ["cosine"]}, "noise_schedule must be a string"),
    ],
)
def test_bad_args_json_types_are_refused(tmp_path, changes, message):
    with pytest.raises(InputError) as caught:
        read_a2p_checkpoint(_a2p_source(tmp_path, **changes))
    assert "args.json: " + message in str(caught.value)


def test_args_json_that_is_not_an_object_or_not_json(tmp_path, capsys):
    source = _a2p_source(tmp_path)
    (source / "args.json").write_text("[1, 2]")
    assert cli("convert", "a2p", source, "--out", tmp_path / "out") == 2
    assert "must hold a JSON object" in one_error_line(capsys)
    (source / "args.json").write_bytes(b'{"heads": "\xff"}')
    assert cli("convert", "a2p", source, "--out", tmp_path / "out") == 2
    assert "is not UTF-8 text" in one_error_line(capsys)
    (source / "args.json").write_text("[" * 100_000)
    assert cli("convert", "a2p", source, "--out", tmp_path / "out") == 2
    assert "args.json" in one_error_line(capsys)


def test_a2p_nan_weight_is_refused(tmp_path, capsys):
    source = _a2p_source(tmp_path)
    checkpoint = next(source.glob("model*.pt"))
    state = torch.load(checkpoint, weights_only=True)
    state["input_projection.weight"][0, 0] = float("inf")
    torch.save(state, checkpoint)
    assert cli("convert", "a2p", source, "--out", tmp_path / "out") == 2
    assert "weight input_projection.weight contains 1 NaN or Inf value" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- push and finetune options


@pytest.mark.parametrize("repo_id", ["bad repo id", "a/b/c", "x/" + "y" * 100])
def test_push_checks_the_repo_id_first(tmp_path, capsys, repo_id):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    assert cli("push", tmp_path / "model", repo_id) == 2
    assert "invalid push target" in one_error_line(capsys)


def test_finetune_checks_the_push_target_before_any_work(tmp_path, capsys, monkeypatch):
    import hf_tts.training.finetune as finetune_module

    monkeypatch.setattr(finetune_module, "_load_rows", lambda *a: pytest.fail("the data was read"))
    code = cli(
        "finetune", "--model", tmp_path, "--data", tmp_path, "--out", tmp_path / "out", "--push-to-hub", "no good"
    )
    assert code == 2 and "invalid push target 'no good'" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "option, value",
    [
        ("--lr", "nan"),
        ("--lr", "inf"),
        ("--lr", "0"),
        ("--lr", "-1e-5"),
        ("--max-steps", "-1"),
        ("--max-steps", "1e3"),
        ("--batch-size", "0"),
        ("--grad-accum", "0"),
        ("--ema-decay", "1.5"),
        ("--ema-update-every", "0"),
        ("--seed", str(2**70)),
        ("--batch-frames", "99999999999"),
        ("--warmup-steps", "-3"),
        ("--logging-steps", "0"),
    ],
)
def test_finetune_numeric_options_are_bounded(tmp_path, capsys, option, value):
    code = cli("finetune", "--model", tmp_path, "--data", tmp_path, "--out", tmp_path / "out", option, value)
    assert code == 2 and f"argument {option}" in one_error_line(capsys)


def test_finetune_python_api_checks_numbers_and_outputs(tmp_path, monkeypatch):
    from hf_tts.training.finetune import finetune

    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="learning_rate must be a finite number in \\(0.0, 1.0\\], got nan"):
        finetune("model", tmp_path, tmp_path / "out", learning_rate=float("nan"))
    with pytest.raises(InputError, match="max_steps must be an integer, got 2.5"):
        finetune("model", tmp_path, tmp_path / "out", max_steps=2.5)
    with pytest.raises(InputError, match="the output path is empty"):
        finetune("model", tmp_path, "")
    with pytest.raises(InputError, match="current folder"):
        finetune("model", tmp_path / "data", ".", overwrite=True)
    with pytest.raises(InputError, match="lies inside the input"):
        finetune("model", tmp_path, tmp_path / "out")
    with pytest.raises(InputError, match="overlap"):
        finetune("model", tmp_path / "data", tmp_path / "out", checkpoint_dir=tmp_path / "out" / "ck")


@pytest.mark.parametrize("family", ["f5", "vocos", "a2p"])
def test_allow_large_is_an_option_of_every_converter(family, capsys):
    with pytest.raises(SystemExit):
        main(["convert", family, "--help"])
    assert "--allow-large" in capsys.readouterr().out
