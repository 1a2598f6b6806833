"""Any transformers model merges: tiny Llama-, GPT-2- and Whisper-shaped models built with transformers' own classes
(random init), merged with every method, `--dry-run`, the generic model card, bare safetensors files, and a push."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard, hf_hub_download
from merge_utils import tree_sha256, weights
from safetensors.torch import load_file, save_file

import hf_tts
from hf_tts.cli import main
from hf_tts.hub.cards import retarget_model_card, usage_snippet
from hf_tts.hub.push import push_folder
from hf_tts.merge.specs import SPECS


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=2))


def _whisper():
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(
        vocab_size=64, num_mel_bins=8, encoder_layers=1, decoder_layers=1, d_model=16, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_source_positions=16,
        max_target_positions=16, decoder_start_token_id=1, pad_token_id=0, eos_token_id=2, bos_token_id=1,
    )  # fmt: skip
    return WhisperForConditionalGeneration(config)


BUILDERS = {"llama": _llama, "gpt2": _gpt2, "whisper": _whisper}
PIPELINE_TAGS = {"llama": "text-generation", "gpt2": "text-generation", "whisper": "automatic-speech-recognition"}
ARCHITECTURES = {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel", "whisper": "WhisperForConditionalGeneration"}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, list[Path]]:
    """Three random checkpoints (two fine-tunes and a base) of each architecture."""
    root = tmp_path_factory.mktemp("transformers")
    folders = {}
    for name, build in BUILDERS.items():
        folders[name] = []
        for seed in range(3):
            torch.manual_seed(seed)
            folder = root / f"{name}{seed}"
            build().save_pretrained(folder)
            folders[name].append(folder)
    return folders


def _method_arguments(method: str, folders: list[Path]) -> list[str]:
    spec = SPECS[method]
    count = 1 if spec.max_sources == 1 else 2
    arguments = [str(folder) for folder in folders[:count]] + ["--method", method]
    if spec.base != "none":
        arguments += ["--base", str(folders[2])]
    if spec.random:
        arguments += ["--seed", "3"]
    if method in ("ties", "dare_linear", "dare_ties", "breadcrumbs", "breadcrumbs_ties", "della", "della_linear"):
        arguments += ["--density", "0.5"]
    if method == "nearswap":
        arguments += ["--t", "0.1"]
    return arguments


@pytest.mark.parametrize("architecture", list(BUILDERS))
def test_every_method_merges_transformers_models(models, tmp_path, capsys, architecture):
    folders = models[architecture]
    before = {folder.name: tree_sha256(folder) for folder in folders}
    for method in SPECS:
        out = tmp_path / method
        assert main(["merge", *_method_arguments(method, folders), "--out", str(out)]) == 0, method
        merged = weights(out)
        assert merged.keys() == weights(folders[0]).keys()
        assert all(torch.isfinite(value).all() for value in merged.values()), method
        card = ModelCard.load(out / "README.md")
        assert card.data.library_name == "transformers" and card.data.pipeline_tag == PIPELINE_TAGS[architecture]
        assert f"`{ARCHITECTURES[architecture]}`" in card.text and f"| method | `{method}` |" in card.text
    assert {folder.name: tree_sha256(folder) for folder in folders} == before
    # The linear merge loads as the model it was made from, with the averaged weights.
    from transformers import AutoModel

    linear_out = tmp_path / "linear"
    model = AutoModel.from_pretrained(linear_out)
    assert model.config.model_type == architecture
    first, second = weights(folders[0]), weights(folders[1])
    for key, value in weights(linear_out).items():
        torch.testing.assert_close(value, (first[key] + second[key]) / 2, rtol=0, atol=1e-6)


@pytest.mark.parametrize("architecture", list(BUILDERS))
def test_dry_run_and_card_parameters(models, tmp_path, capsys, architecture):
    folders = models[architecture]
    capsys.readouterr()
    assert main(["merge", str(folders[0]), str(folders[1]), "--dry-run"]) == 0
    plan_text = capsys.readouterr().out
    assert "merge plan: linear of 2" in plan_text and not (tmp_path / "out").exists()
    path, report = hf_tts.merge(folders[:2], out_dir=tmp_path / "out")
    text = (path / "README.md").read_text()
    parameters = sum(value.numel() for value in weights(folders[0]).values() if value.is_floating_point())
    assert f"| parameters | {parameters:,} |" in text
    assert json.loads((path / "config.json").read_text())["model_type"] == architecture


def test_source_card_metadata_wins(models, tmp_path):
    """The pipeline tag, library and license of the sources' own card are carried over."""
    folders = models["gpt2"]
    card_text = "---\nlibrary_name: transformers\npipeline_tag: text-classification\nlicense: mit\n---\n# gpt2\n"
    donor = tmp_path / "donor"
    donor.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        if (folders[0] / name).is_file():
            (donor / name).write_bytes((folders[0] / name).read_bytes())
    (donor / "README.md").write_text(card_text)
    path, _ = hf_tts.merge([donor, folders[1]], out_dir=tmp_path / "out")
    card = ModelCard.load(path / "README.md")
    assert card.data.pipeline_tag == "text-classification" and card.data.license == "mit"


def test_bare_safetensors_files_merge(models, tmp_path, local_hub):
    """State dicts without any config: merged key by key into a model.safetensors with a generic card whose usage
    snippet loads the weights from the folder and, once pushed, from the Hub."""
    files = []
    for index, folder in enumerate(models["llama"]):
        target = tmp_path / f"state{index}.safetensors"
        save_file(load_file(folder / "model.safetensors"), target)
        files.append(target)
    path, report = hf_tts.merge(files[:2], method="ties", base=files[2], density=0.5, out_dir=tmp_path / "out")
    assert sorted(p.name for p in path.iterdir()) == [
        "README.md", "merge_distance.png", "merge_recipe.yaml", "model.safetensors"
    ]  # fmt: skip
    assert report.plan.sources[0].kind == "file"
    card = ModelCard.load(path / "README.md")
    assert card.data.library_name == "safetensors" and "load_file" in card.text
    assert weights(path).keys() == load_file(files[0]).keys()
    expected = f"{len(weights(path))} tensors"
    for model_id in ("./out", "user/bare-merge"):
        if model_id != "./out":
            push_folder(path, model_id)
        snippet = usage_snippet(retarget_model_card(card.content, model_id))
        run = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True)
        assert run.returncode == 0 and run.stdout.strip() == expected, run.stderr[-1500:]


def test_push_generic_merge(models, tmp_path, local_hub):
    path, report = hf_tts.merge(
        models["llama"][:2], method="slerp", out_dir=tmp_path / "out", push_to_hub="user/llama-merge"
    )
    assert report.commit_url
    assert "README.md" in HfApi().list_repo_files("user/llama-merge")
    card = ModelCard.load(hf_hub_download("user/llama-merge", "README.md"))
    assert card.data.library_name == "transformers" and 'model_id = "user/llama-merge"' in card.text
    assert load_file(hf_hub_download("user/llama-merge", "model.safetensors")).keys() == weights(path).keys()
