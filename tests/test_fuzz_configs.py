"""Property tests (issue 12) over config dicts, a2p `args.json`, convert-f5 arch files and CLI option values: each
input either gives a valid result or an InputError (for the CLI: exit 2 with one stderr line), never another
exception; a config that constructs and is small builds its model and runs a forward; inputs stay unchanged."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given
from hypothesis import strategies as st

from hf_tts import (
    CFGMotionConfig,
    CFGMotionModel,
    E2TTSConfig,
    E2TTSModel,
    F5TTSConfig,
    F5TTSModel,
    VocosConfig,
    VocosModel,
)
from hf_tts.cli import main
from hf_tts.convert.a2p import read_a2p_checkpoint
from hf_tts.convert.f5 import resolve_arch
from hf_tts.errors import InputError
from hf_tts.modeling_utils import estimate_model_size
from tests.conftest import upstream_fixture
from tests.fuzz import FUZZ
from tests.test_safety_configs import TINY_CFG, TINY_E2, TINY_F5, TINY_VOCOS

# Models up to this many parameters + buffers are built in the property (a few ms each on a CPU).
BUILD_LIMIT = 2_000_000

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-4, max_value=300),  # small values hit the cross-field rules
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 0.5, 1.0, 1e9, -1.0]),
    st.text(max_size=8),
    st.sampled_from(["rms_norm", "char", "pinyin", "euler", "midpoint", "concat", "add", "none", "center", "same"]),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6,
)

FAMILIES = {
    "f5": (F5TTSConfig, F5TTSModel, TINY_F5),
    "e2": (E2TTSConfig, E2TTSModel, TINY_E2),
    "vocos": (VocosConfig, VocosModel, TINY_VOCOS),
    "cfg_motion": (CFGMotionConfig, CFGMotionModel, TINY_CFG),
}


def _own_fields(config_class) -> list[str]:
    from hf_tts.configuration_utils import _own_fields as own

    return sorted(own(config_class) - {"audio_encoder", "vocoder_config"})  # sub-configs: fuzzed below, bounded


def _forward(model: torch.nn.Module, config) -> torch.Tensor:
    """A tiny forward that exercises what the config's rules protect (attention, rotary, convolutions, STFT)."""
    if isinstance(model, (F5TTSModel, E2TTSModel)):
        x = torch.randn(1, 4, config.mel_dim)
        return model.backbone(x, x, torch.tensor([[0, 1, -1]]), torch.tensor([0.3]))
    if isinstance(model, VocosModel):
        return model.decode(torch.randn(1, config.n_mels, 3))
    frames = min(config.max_window_frames, 6)
    return model.denoiser(
        torch.randn(1, frames, config.nfeats), torch.tensor([0]), torch.randn(1, 3, config.cond_feature_dim)
    )


@FUZZ
@given(
    family=st.sampled_from(sorted(FAMILIES)),
    data=st.data(),
)
def test_random_config_dicts_construct_and_build_or_refuse(family, data):
    config_class, model_class, base = FAMILIES[family]
    fields = data.draw(st.lists(st.sampled_from(_own_fields(config_class)), min_size=1, max_size=3, unique=True))
    values = {**base, **{field: data.draw(json_values, label=field) for field in fields}}
    try:
        config = config_class(**values)
    except InputError:
        return
    # Constructed: the model builds (when small) and runs; a big one is refused by the size check, cleanly.
    size = estimate_model_size(model_class, config)
    if size.elements > BUILD_LIMIT:
        return
    torch.manual_seed(0)
    model = model_class(config).eval()
    assert (sum(p.numel() for p in model.parameters()), sum(b.numel() for b in model.buffers())) == (
        size.parameters,
        size.buffers,
    )
    with torch.no_grad():
        assert _forward(model, config).numel() > 0


@FUZZ
@given(config_json=st.dictionaries(st.sampled_from(_own_fields(F5TTSConfig)), json_values, max_size=4))
def test_random_config_json_loads_or_names_the_file(tmp_path_factory, config_json):
    folder = tmp_path_factory.mktemp("cfg")
    (folder / "config.json").write_text(json.dumps({"model_type": "hf_tts_f5", **TINY_F5, **config_json}))
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(str(folder))
    except InputError as error:
        assert str(error).startswith(f"{folder}/config.json: ")
        assert len(str(error).splitlines()) == 1


# ---------------------------------------------------------------- a2p args.json

A2P_ARG_KEYS = [
    "heads", "data_format", "not_rotary", "unconstrained", "cond_mode", "noise_schedule", "lambda_vel",
    "cond_mask_prob", "latent_dim", "diffusion_steps",
]  # fmt: skip


@pytest.fixture(scope="module")
def a2p_source(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("a2p") / "face"
    shutil.copytree(upstream_fixture("a2p_face_tiny"), source)
    return source


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(A2P_ARG_KEYS), json_values, max_size=4), top=st.booleans())
def test_random_args_json_gives_a_config_or_an_input_error(a2p_source, changes, top):
    original = json.loads((upstream_fixture("a2p_face_tiny") / "args.json").read_text())
    document = {**original, **changes} if top else list(changes.values())
    (a2p_source / "args.json").write_text(json.dumps(document))
    weights = next(a2p_source.glob("model*.pt"))
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    try:
        checkpoint = read_a2p_checkpoint(a2p_source)
    except InputError as error:
        assert len(str(error).splitlines()) == 1
    else:
        assert checkpoint.config.heads >= 1
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == digest


# ---------------------------------------------------------------- convert f5 arch files

ARCH_KEYS = ["dim", "depth", "heads", "dim_head", "ff_mult", "text_dim", "conv_layers", "qk_norm", "pe_attn_head"]


@FUZZ
@given(
    arch_changes=st.dictionaries(st.sampled_from(ARCH_KEYS), json_values, max_size=3),
    top_changes=st.dictionaries(st.sampled_from(["backbone", "mel_spec", "tokenizer", "arch", "name"]), json_values),
    as_yaml=st.booleans(),
)
def test_random_arch_files_give_a_config_or_an_input_error(tmp_path_factory, arch_changes, top_changes, as_yaml):
    original = json.loads((upstream_fixture("f5_v1_tiny") / "arch.json").read_text())
    document = {**original, "arch": {**original["arch"], **arch_changes}, **top_changes}
    folder = tmp_path_factory.mktemp("arch")
    if as_yaml:
        path = folder / "arch.yaml"
        try:
            path.write_text(yaml.safe_dump({"model": document}))
        except (yaml.YAMLError, ValueError):  # strings YAML cannot represent (e.g. lone surrogates)
            return
    else:
        path = folder / "arch.json"
        path.write_text(json.dumps(document))
    try:
        config = resolve_arch(path, text_num_embeds=10)
    except InputError as error:
        assert len(str(error).splitlines()) == 1
    else:
        assert config.text_num_embeds == 10


# ---------------------------------------------------------------- CLI option values

option_text = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "0", "-1", "1e-5", "1e308", "2", "0.5", str(2**70), "", " ", "1_0"]),
    st.integers(min_value=-(2**66), max_value=2**66).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=6),
)
FINETUNE_OPTIONS = [
    "--max-steps", "--lr", "--batch-frames", "--batch-size", "--max-samples", "--grad-accum", "--warmup-steps",
    "--ema-decay", "--ema-update-after-step", "--ema-update-every", "--logging-steps", "--save-steps", "--seed",
]  # fmt: skip


def _cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit:
        return int(exit.code)


@FUZZ
@given(option=st.sampled_from(FINETUNE_OPTIONS), value=option_text)
def test_finetune_option_values_exit_2_with_one_line(tmp_path_factory, capsys, option, value):
    folder = tmp_path_factory.mktemp("ft")
    # The data folder is empty, so a valid value still ends in exit 2 ("has neither a metadata.csv") quickly.
    argv = ["finetune", "--model", str(folder / "m"), "--data", str(folder), "--out", str(folder.parent / "o")]
    code = _cli([*argv, f"{option}={value}"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1, error
    assert not (folder.parent / "o").exists()


@FUZZ
@given(arch=option_text, out_name=st.text(alphabet="ab._-", min_size=0, max_size=4), overwrite=st.booleans())
def test_convert_option_values_exit_0_or_2(tmp_path_factory, capsys, arch, out_name, overwrite):
    source = upstream_fixture("vocos_tiny")
    digest = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in source.iterdir()}
    folder = tmp_path_factory.mktemp("conv")
    argv = ["convert", "vocos", str(source), "--out", str(folder / out_name) if out_name else ""]
    code = _cli(argv + (["--overwrite"] if overwrite else []))
    error = capsys.readouterr().err.strip()
    if code == 2:
        assert len(error.splitlines()) == 1, error
    else:
        assert code == 0 and (folder / out_name / "config.json").is_file()
    f5 = ["convert", "f5", str(source / "pytorch_model.bin"), "--arch", arch, "--vocab", str(source / "none.txt")]
    assert _cli([*f5, "--out", str(folder / "f5")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in source.iterdir()} == digest


def test_fuzz_strategies_reach_both_outcomes():
    """The config property above is only meaningful if random dicts both construct and fail: check one of each."""
    assert F5TTSConfig(**{**TINY_F5, "depth": 3}).depth == 3
    with pytest.raises(InputError):
        F5TTSConfig(**{**TINY_F5, "depth": math.inf})
