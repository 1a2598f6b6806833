"""The rough edges a new user hit (issue 17): abbreviations, --quiet, one-line warnings, errors after progress bars,
`hf-tts presets`, `hf-tts inspect`, missing local folders, animate's progress / --device / --dtype, `convert
--dtype`, attach-vocoder's folder kinds."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from speech_fixtures import f5_dir, vocos_dir

from hf_tts.cli import COMMANDS, build_parser, main
from hf_tts.commands.convert import CONVERT_FAMILIES, SAVE_DTYPES
from hf_tts.errors import InputError
from hf_tts.file_utils import read_safetensors_header
from hf_tts.model_source import check_model_source
from tests.conftest import upstream_fixture


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main([str(arg) for arg in argv])
    except SystemExit as exit_info:  # argparse (--help, refused options)
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def motion_dir(tmp_path_factory):
    from hf_tts import CFGMotionConfig, CFGMotionModel
    from tests.test_cfg_motion_pipeline import TINY

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("motion") / "model"
    CFGMotionModel(
        CFGMotionConfig(architecture="face", num_inference_steps=4, max_cond_len=64, **TINY)
    ).save_pretrained(folder)
    np.save(folder.parent / "features.npy", np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32))
    return folder


# ------------------------------------------------------------------ options


def test_abbreviated_options_are_refused(capsys, motion_dir, tmp_path):
    code, _, err = run(capsys, "animate", motion_dir, "--features", motion_dir.parent / "features.npy",
                       "--num-frames", "9", "--out", tmp_path / "m.npy", "--see", "1")  # fmt: skip
    assert code == 2 and "unrecognized arguments: --see 1" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "m.npy").exists()


@pytest.mark.parametrize(
    "argv",
    [[name] for name in COMMANDS] + [["convert", family] for family in CONVERT_FAMILIES] + [["hub", "serve"]],
    ids=" ".join,
)
def test_every_command_and_subcommand_takes_quiet(capsys, argv):
    code, out, _ = run(capsys, *argv, "--quiet", "--help")
    assert code == 0 and "--quiet" in out


def test_quiet_given_to_a_command_reaches_its_subcommand():
    argv = ["convert", "--quiet", "f5", "c.pt", "--arch", "F5TTS_v1_Base", "--vocab", "v.txt", "--out", "o"]
    assert build_parser(argv).parse_args(argv).quiet is True
    argv = ["convert", "f5", "c.pt", "--arch", "F5TTS_v1_Base", "--vocab", "v.txt", "--out", "o"]
    assert getattr(build_parser(argv).parse_args(argv), "quiet", False) is False


def test_quiet_silences_bars_logging_and_warnings_and_keeps_the_summary(capsys, motion_dir, tmp_path, monkeypatch):
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as transformers_logging

    features = motion_dir.parent / "features.npy"
    base = ["animate", motion_dir, "--features", features, "--num-frames", "9", "--seed", "0"]
    code, out, err = run(capsys, *base, "--out", tmp_path / "plain.npy")
    assert code == 0 and err == ""  # stderr is not a terminal: no bar, so logs keep one line per error
    monkeypatch.setattr(type(sys.stderr), "isatty", lambda self: True)  # as on a terminal
    code, out, err = run(capsys, *base, "--out", tmp_path / "loud.npy")
    assert code == 0 and "denoising: 100%" in err and "4/4" in err  # a bar over the diffusion steps
    verbosity = transformers_logging.get_verbosity()
    code, out, err = run(capsys, *base, "--out", tmp_path / "quiet.npy", "--quiet")
    assert code == 0 and err == "" and out.startswith(f"wrote {tmp_path / 'quiet.npy'}")
    np.testing.assert_array_equal(np.load(tmp_path / "loud.npy"), np.load(tmp_path / "quiet.npy"))
    # main() leaves the process as it found it
    assert not are_progress_bars_disabled() and transformers_logging.get_verbosity() == verbosity
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ and "TQDM_DISABLE" not in os.environ


def test_warnings_are_one_line_and_quiet_drops_them(capsys, monkeypatch):
    from hf_tts.commands import presets

    def warn(args: argparse.Namespace) -> int:
        warnings.warn("the reference is long\nsecond line", UserWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(presets, "_run", warn)
    code, _, err = run(capsys, "presets")
    assert code == 0 and err == "hf-tts presets: warning: the reference is long\n"
    code, _, err = run(capsys, "presets", "--quiet")
    assert code == 0 and err == ""


def test_an_error_after_a_progress_bar_starts_a_line(capsys, monkeypatch):
    from huggingface_hub.utils import tqdm

    from hf_tts.commands import presets

    def fail_mid_bar(args: argparse.Namespace) -> int:
        bar = tqdm(total=10, desc="working")
        bar.update(3)
        raise InputError("something specific went wrong")

    monkeypatch.setattr(presets, "_run", fail_mid_bar)
    code, _, err = run(capsys, "presets")
    assert code == 2
    before, _, after = err.partition("hf-tts presets: error: something specific went wrong")
    assert after == "\n" and before.endswith(("\n", "\r"))  # the bar was closed: the error is at column 0
    assert not list(getattr(tqdm, "_instances", ()))


# ------------------------------------------------------------------ presets / inspect


def test_presets_lists_speech_and_motion_presets(capsys):
    code, out, _ = run(capsys, "presets")
    assert code == 0
    for name in ("F5TTS_v1_Base", "F5TTS_Base", "F5TTS_v1_Small", "E2TTS_Base", "E2TTS_Small", "face", "body"):
        assert name in out
    code, out, _ = run(capsys, "presets", "--json")
    table = json.loads(out)
    from hf_tts import E2TTSConfig, F5TTSConfig

    assert table["F5-TTS"] == F5TTSConfig.presets and table["E2-TTS"] == E2TTSConfig.presets
    assert table["CFG motion"]["body"]["nfeats"] == 104


def test_inspect_local_folder(capsys):
    from transformers import AutoModel

    folder = f5_dir()
    code, out, _ = run(capsys, "inspect", folder, "--json")
    assert code == 0
    info = json.loads(out)
    model = AutoModel.from_pretrained(folder, dtype=torch.float32)
    saved = sum(tensor.numel() for tensor in model.state_dict().values())
    assert info["model_type"] == "hf_tts_f5" and info["architecture"] == model.config.architecture
    assert info["parameters"] == saved and info["parameters_by_dtype"] == {"F32": saved}
    assert info["sizes"]["dim"] == model.config.dim and info["flags"]["text_mask_padding"] is True
    assert info["vocoder"].startswith("hf_tts_vocos carried in the folder")
    assert info["tokenizer"].startswith("vocab.txt (2545 tokens, pinyin")
    assert info["card"]["library_name"] == "hf-tts" and info["card"]["title"]
    code, out, _ = run(capsys, "inspect", folder)
    assert code == 0 and "F5-TTS" in out and f"{saved:,}" in out and "vocoder:" in out


def test_inspect_hub_repo_equals_the_folder(capsys, local_hub):
    from hf_tts.hub.push import push_folder

    push_folder(f5_dir(), "org/f5-tiny")
    code, out, _ = run(capsys, "inspect", "org/f5-tiny", "--json")
    assert code == 0, out
    remote = json.loads(out)
    run(capsys, "inspect", f5_dir(), "--json")
    local = json.loads(run(capsys, "inspect", f5_dir(), "--json")[1])
    for key in ("model_type", "architecture", "flags", "sizes", "parameters", "parameters_by_dtype", "vocoder"):
        assert remote[key] == local[key], key
    assert remote["location"] == local_hub.url and remote["weights_bytes"] == local["weights_bytes"]
    code, _, err = run(capsys, "inspect", "org/missing")
    assert code == 2 and f"HF_ENDPOINT={local_hub.url}" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("./no-such-model", "folder ./no-such-model does not exist"),
        ("tests/no-such-model", "tests exists, check the name after it"),
        ("a b c", "neither an existing folder nor a Hub repo id"),
    ],
)
def test_a_missing_local_folder_is_reported_at_once(capsys, monkeypatch, source, message):
    # No Hub is reachable at this endpoint: a Hub lookup would fail differently (and slowly, with retries).
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)  # the project root, which has a tests/ folder
    code, _, err = run(capsys, "inspect", source)
    assert code == 2 and message in err and len(err.splitlines()) == 1


def test_check_model_source(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "file.bin").write_bytes(b"x")
    assert check_model_source(tmp_path / "model") == str(tmp_path / "model")
    assert check_model_source("org/name") == "org/name"
    with pytest.raises(InputError, match="is a file"):
        check_model_source(tmp_path / "file.bin")
    with pytest.raises(InputError, match=f"{tmp_path} exists, check the name after it"):
        check_model_source(tmp_path / "modle" / "x")


# ------------------------------------------------------------------ animate / convert / attach-vocoder


def test_animate_device_and_dtype(capsys, motion_dir, tmp_path):
    features = motion_dir.parent / "features.npy"
    base = ["animate", motion_dir, "--features", features, "--num-frames", "9", "--seed", "0"]
    code, _, err = run(capsys, *base, "--out", tmp_path / "x.npy", "--device", "nonsense")
    assert code == 2 and "--device 'nonsense' is not a torch device name" in err and len(err.splitlines()) == 1
    code, _, err = run(capsys, *base, "--out", tmp_path / "x.npy", "--dtype", "float64")
    assert code == 2 and "invalid choice" in err
    assert run(capsys, *base, "--out", tmp_path / "f32.npy")[0] == 0
    assert run(capsys, *base, "--out", tmp_path / "bf16.npy", "--dtype", "bfloat16")[0] == 0
    full, half = np.load(tmp_path / "f32.npy"), np.load(tmp_path / "bf16.npy")
    assert half.dtype == np.float32 and half.shape == full.shape and np.isfinite(half).all()
    assert not np.array_equal(full, half)  # it really ran in bfloat16


def test_convert_dtype_choices_match_the_converters():
    from hf_tts.convert.f5 import SAVE_DTYPES as CONVERTER_DTYPES

    assert SAVE_DTYPES == CONVERTER_DTYPES


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_convert_saves_half_precision(capsys, tmp_path, dtype):
    from transformers import AutoModel

    source = upstream_fixture("f5_v1_tiny")
    out = tmp_path / "half"
    code, stdout, _ = run(capsys, "convert", "f5", source / "model_ema.safetensors", "--arch", source / "arch.json",
                          "--vocab", upstream_fixture("f5_vocab.txt"), "--out", out, "--dtype", dtype)  # fmt: skip
    assert code == 0 and f"weights in {dtype}" in stdout
    header, _ = read_safetensors_header(out / "model.safetensors")
    short = {"float16": "F16", "bfloat16": "BF16"}[dtype]
    assert {entry["dtype"] for key, entry in header.items() if key != "__metadata__"} == {short}
    assert json.loads((out / "config.json").read_text())["dtype"] == dtype
    model = AutoModel.from_pretrained(out)
    assert model.dtype == getattr(torch, dtype)
    full = AutoModel.from_pretrained(f5_dir(with_vocoder=False), dtype=torch.float32)
    with safe_open(out / "model.safetensors", "pt") as handle:
        for key in ("backbone.proj_out.weight", "backbone.text_embed.text_embed.weight"):
            expected = full.state_dict()[key].to(getattr(torch, dtype))
            assert torch.equal(handle.get_tensor(key), expected)  # a plain cast of the upstream values


def test_vocos_and_a2p_convert_in_half_precision(capsys, tmp_path):
    code, out, _ = run(capsys, "convert", "vocos", upstream_fixture("vocos_tiny"), "--out", tmp_path / "v", "--dtype",
                       "bfloat16")  # fmt: skip
    assert code == 0 and "in bfloat16" in out
    code, out, _ = run(capsys, "convert", "a2p", upstream_fixture("a2p_pose_tiny"), "--out", tmp_path / "a",
                       "--dtype", "float16")  # fmt: skip
    assert code == 0 and "in float16" in out
    for folder, short in ((tmp_path / "v", "BF16"), (tmp_path / "a", "F16")):
        header, _ = read_safetensors_header(folder / "model.safetensors")
        assert {entry["dtype"] for key, entry in header.items() if key != "__metadata__"} == {short}


def test_float16_overflow_is_refused_by_name():
    from hf_tts.convert.f5 import cast_for_saving

    module = torch.nn.Linear(2, 2)
    with torch.no_grad():
        module.weight[0, 0] = 1e6
    with pytest.raises(InputError, match="weight holds values beyond float16's range"):
        cast_for_saving(module, "float16", "ckpt.pt")
    assert module.weight.dtype == torch.float32  # nothing was cast
    cast_for_saving(module, "bfloat16", "ckpt.pt")
    assert module.weight.dtype == torch.bfloat16


def test_attach_vocoder_refuses_other_folder_kinds(capsys, motion_dir, tmp_path):
    code, _, err = run(capsys, "attach-vocoder", motion_dir, vocos_dir(), "--out", tmp_path / "o")
    assert code == 2 and "is a CFG motion model" in err and "freeze_quantizer" not in err
    model = tmp_path / "f5"
    shutil.copytree(f5_dir(with_vocoder=False), model)
    code, _, err = run(capsys, "attach-vocoder", model, f5_dir(), "--out", tmp_path / "o")
    assert code == 2 and "is a F5-TTS" in err and "not a Vocos vocoder" in err
    assert not (tmp_path / "o").exists()


def test_a_closed_stdout_pipe_ends_the_command_quietly():
    # `hf-tts presets | head -1`: the reader has gone before the command writes; no traceback, exit 141 (SIGPIPE).
    import subprocess

    reader, writer = os.pipe()
    os.close(reader)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "hf_tts.cli", "presets"], stdout=writer, stderr=subprocess.PIPE, timeout=120
        )
    finally:
        os.close(writer)
    assert result.returncode == 141, result.stderr.decode()[-2000:]
    assert result.stderr == b""
