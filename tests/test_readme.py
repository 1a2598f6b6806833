"""Every ```python block of README.md runs, as written, in a folder that holds small stand-ins under the names the
README uses, so a snippet that does not run fails CI.

Stand-ins: `f5tts-v1-base`, `f5tts`, `converted_dir` (the converted tiny upstream F5-TTS with its tiny Vocos), `vocos`,
`a2p-body` (the converted tiny audio2photoreal body model), `my-motion-model` (a tiny motion model with a speech
encoder), `my-f5` (a writable copy of the F5 folder), `ref.wav`, `voice.wav`, `features.npy`,
`model_1250000.safetensors`, and `path/to/f5-model` + `path/to/metadata_folder` (a tiny model and an upstream-layout
dataset) for the training example. The Hub is the package's local registry (HF_ENDPOINT).

A snippet that needs a change to run small says so in an HTML comment right above its block (invisible on GitHub):
`<!-- readme-test: replace "OLD" "NEW" -->` replaces the exact text OLD with NEW before the block runs (the test
fails if OLD is not in the block, so a stale directive is noticed).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from tests.conftest import upstream_fixture

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(r"((?:<!-- readme-test: .*? -->\n)*)```python\n(.*?)```", re.DOTALL)
_REPLACE = re.compile(r'<!-- readme-test: replace "(.*?)" "(.*?)" -->')


def readme_blocks() -> list[tuple[int, str, list[tuple[str, str]]]]:
    """(line number, code, replacements) of every python block."""
    text = README.read_text(encoding="utf-8")
    blocks = []
    for match in _BLOCK.finditer(text):
        line = text.count("\n", 0, match.start(2))
        blocks.append((line, match.group(2), _REPLACE.findall(match.group(1))))
    return blocks


def test_readme_has_python_blocks_and_well_formed_directives():
    blocks = readme_blocks()
    assert len(blocks) >= 7
    text = README.read_text(encoding="utf-8")
    # a directive that is not a `replace` (or a typo in one) would be silently ignored otherwise
    assert text.count("<!-- readme-test:") == sum(len(replacements) for _, _, replacements in blocks)


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    """The stand-ins, built once; each snippet runs in its own folder of links to them."""
    from speech_fixtures import f5_dir, reference_wave, vocos_dir

    from hf_tts import CFGMotionConfig, CFGMotionModel
    from hf_tts.convert.a2p import convert_a2p_checkpoint
    from tests.test_cfg_motion_pipeline import TINY, TINY_WAV2VEC2
    from tests.training_utils import make_model_folder, write_metadata_folder

    folder = tmp_path_factory.mktemp("readme-assets")
    for name in ("f5tts-v1-base", "f5tts", "converted_dir", "my-f5"):
        shutil.copytree(f5_dir(), folder / name)
    shutil.copytree(vocos_dir(), folder / "vocos")
    convert_a2p_checkpoint(upstream_fixture("a2p_pose_tiny"), folder / "a2p-body")
    torch.manual_seed(0)
    motion_config = CFGMotionConfig(
        architecture="face", audio_encoder=TINY_WAV2VEC2, num_inference_steps=4, max_cond_len=1000, **TINY
    )
    CFGMotionModel(motion_config).save_pretrained(folder / "my-motion-model")
    soundfile.write(folder / "ref.wav", reference_wave(), 24000)
    rng = np.random.default_rng(0)
    soundfile.write(folder / "voice.wav", 0.1 * rng.standard_normal(8000).astype(np.float32), 16000)
    np.save(folder / "features.npy", rng.standard_normal((100, TINY["cond_feature_dim"])).astype(np.float32))
    shutil.copy(upstream_fixture("f5_v1_tiny") / "model_ema.safetensors", folder / "model_1250000.safetensors")
    make_model_folder(folder / "path" / "to" / "f5-model")
    write_metadata_folder(folder / "path" / "to" / "metadata_folder")
    return folder


@pytest.mark.parametrize(
    ("line", "code", "replacements"), [pytest.param(*block, id=f"README.md:{block[0]}") for block in readme_blocks()]
)
def test_readme_block_runs(line, code, replacements, assets, tmp_path, monkeypatch, request):
    for old, new in replacements:
        assert old in code, f"README.md line {line}: the readme-test directive's {old!r} is not in the block"
        code = code.replace(old, new)
    work = tmp_path / "work"
    work.mkdir()
    for entry in assets.iterdir():
        if entry.name == "my-f5":  # written to by the card example
            shutil.copytree(entry, work / entry.name)
        else:
            os.symlink(entry, work / entry.name)
    if "push" in code:  # the Hub is the package's local registry on 127.0.0.1 (HF_ENDPOINT)
        request.getfixturevalue("local_hub")
    monkeypatch.chdir(work)
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": f"readme_line_{line}"})  # noqa: S102 (the README)
