"""Merge helper with foreign sources (XTTS-v2 checkpoints, upstream F5 files, Hub repo ids), the Hub push, the CLI."""

from __future__ import annotations

import datetime
import hashlib
import json
import shutil

import pytest
import torch
from conftest import upstream_fixture
from huggingface_hub import HfApi, ModelCard, hf_hub_download
from merge_utils import make_f5_folder, make_xtts_checkpoint, weights
from safetensors.torch import load_file

import hf_tts
from hf_tts.cli import main
from hf_tts.convert.f5 import convert_f5_checkpoint
from hf_tts.errors import InputError
from hf_tts.hub.push import push_folder

# Comparisons are fp32 merges against fp32/fp64 hand computations.
TOLERANCE = 1e-6


def test_pickled_objects_refused_without_trust(tmp_path):
    bad = tmp_path / "bad.pth"
    # A datetime object is outside torch's weights_only allow-list, as any custom class would be.
    torch.save(
        {"model": {"xtts.gpt.w": torch.zeros(2)}, "config": {"model": "xtts"}, "date": datetime.date(2024, 1, 1)}, bad
    )
    good = make_xtts_checkpoint(tmp_path / "good", seed=1)
    with pytest.raises(InputError, match="--trust-pickle"):
        hf_tts.merge([good, bad], out_dir=tmp_path / "out")


def test_upstream_f5_sources_converted_on_the_fly(tmp_path):
    fixture = upstream_fixture("f5_v1_tiny")
    vocab = upstream_fixture("f5_vocab.txt")
    arch = fixture / "arch.json"
    ema = load_file(fixture / "model_ema.safetensors")
    upstream = {
        "backbone." + key.removeprefix("ema_model.transformer."): value
        for key, value in ema.items()
        if key.startswith("ema_model.transformer.") and "rotary_embed" not in key
    }
    # The EMA export and the training checkpoint's EMA weights are the same model.
    path, report = hf_tts.merge(
        [fixture / "model_ema.safetensors", fixture / "model_train.pt"],
        [1.0, 3.0],
        out_dir=tmp_path / "out",
        arch=str(arch),
        vocab=vocab,
    )
    output = weights(path)
    assert set(output) == set(upstream)
    for name, value in upstream.items():
        torch.testing.assert_close(output[name], value, rtol=0, atol=TOLERANCE)
    assert [source.variant for source in report.plan.sources] == ["ema", "ema"]
    # --source online reads model_state_dict (the fixture's online weights are EMA + 0.001).
    online, _ = hf_tts.merge(
        [fixture / "model_train.pt", fixture / "model_train.pt"],
        out_dir=tmp_path / "online",
        arch=str(arch),
        vocab=vocab,
        source="online",
    )
    for name, value in weights(online).items():
        torch.testing.assert_close(value, upstream[name] + 0.001, rtol=0, atol=TOLERANCE)
    with pytest.raises(InputError, match="holds only EMA weights") as refused:
        hf_tts.merge(
            [fixture / "model_ema.safetensors", fixture / "model_train.pt"],
            out_dir=tmp_path / "mixed",
            arch=str(arch),
            vocab=vocab,
            source="online",
        )
    # The message names the merge's flag, not `hf-tts convert f5`'s --use-online-weights.
    assert "--source online needs a training checkpoint" in str(refused.value)
    assert "--use-online-weights" not in str(refused.value)
    model = hf_tts.F5TTSModel.from_pretrained(path, dtype=torch.float32)
    assert model.config.architecture == hf_tts.F5TTSModel.from_pretrained(path).config.architecture
    assert (path / "vocab.txt").read_bytes() == vocab.read_bytes()
    # The processor `hf-tts convert f5` writes comes along, so the pipeline loads the merge with its own settings.
    assert json.loads((path / "processor_config.json").read_text())["processor_class"] == "F5Processor"
    # v0 and v1 share every weight name and shape, yet are refused. Upstream files carry no config (one --arch
    # describes them all), so the v0 model comes as a converted folder, which records its architecture.
    v0 = upstream_fixture("f5_v0_tiny")
    v0_folder = convert_f5_checkpoint(v0 / "model_ema.safetensors", v0 / "arch.json", vocab, tmp_path / "v0")
    with pytest.raises(InputError, match=r"configs of source 1 .* and source 2 .*text_mask_padding: True vs False"):
        hf_tts.merge(
            [fixture / "model_ema.safetensors", v0_folder], out_dir=tmp_path / "bad", arch=str(arch), vocab=vocab
        )
    assert not (tmp_path / "bad").exists()


def test_hub_sources_and_push_in_one_commit(tmp_path, local_hub):
    first = make_f5_folder(tmp_path / "a", 0)
    second = make_f5_folder(tmp_path / "b", 1)
    push_folder(first, "user/voice-a")
    path, report = hf_tts.merge(["user/voice-a", second], [1, 1], out_dir=tmp_path / "out", push_to_hub="user/merged")
    # The downloaded weights' hash is their Hub blob name, and it is the content's real sha256.
    local_weights = hashlib.sha256((first / "model.safetensors").read_bytes()).hexdigest()
    assert report.input_sha256["user/voice-a"]["model.safetensors"] == local_weights
    assert local_weights in (path / "README.md").read_text()
    api = HfApi()
    commits = api.list_repo_commits("user/merged")
    # Repo creation makes the (empty) initial commit, as on the Hub; then weights, config, vocab, recipe, plot and
    # card land in one commit.
    assert [commit.title for commit in commits] == ["Merge (linear) with hf_tts", "initial commit"]
    files = set(api.list_repo_files("user/merged"))
    assert {
        "model.safetensors",
        "config.json",
        "README.md",
        "merge_recipe.yaml",
        "merge_distance.png",
        "vocab.txt",
    } <= files
    card = ModelCard.load(hf_hub_download("user/merged", "README.md"))
    assert card.data.base_model == ["user/voice-a"]
    assert card.data.base_model_relation == "merge"
    assert card.data.library_name == "hf-tts"
    assert 'model_id = "user/merged"' in card.text  # the snippet points at the repo
    downloaded = hf_hub_download("user/merged", "model.safetensors")
    assert load_file(downloaded).keys() == weights(path).keys()


def test_cli_merge_dry_run_and_errors(tmp_path, capsys):
    first = make_f5_folder(tmp_path / "a", 0)
    second = make_f5_folder(tmp_path / "b", 1)
    assert main(["merge", str(first), str(second), "--weights", "1", "2", "--dry-run"]) == 0
    assert "linear of 2 hf_tts_f5 sources" in capsys.readouterr().out
    assert main(["merge", str(first), str(second), "--weights", "1", "--out", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "1 weights for 2 sources" in error
    code = main(
        ["merge", str(first), str(second), "--out", str(tmp_path / "o"), "--method", "ties", "--base", str(first),
         "--density", "0.5", "--layer-weights", "text_embed=1,0", "--dtype", "float32", "--max-shard-size", "100KB"]
    )  # fmt: skip
    assert code == 0 and (tmp_path / "o" / "model.safetensors.index.json").exists()
    assert main(["merge", "--recipe", str(tmp_path / "o" / "merge_recipe.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "contains the input" in capsys.readouterr().err  # the recipe lies inside --out
    shutil.copy(tmp_path / "o" / "merge_recipe.yaml", tmp_path / "recipe.yaml")
    assert main(["merge", "--recipe", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_upstream_f5_sources_are_memory_mapped(tmp_path, monkeypatch, caplog):
    """Upstream files are never read whole: `.safetensors` through the merge's own mapped reader, zip-format `.pt`
    with torch.load(mmap=True); a legacy-format `.pt` (which cannot be mapped) is read whole with a warning."""
    import safetensors.torch

    import hf_tts.merge.sources as sources

    fixture = upstream_fixture("f5_v1_tiny")
    options = {"arch": str(fixture / "arch.json"), "vocab": upstream_fixture("f5_vocab.txt")}
    expected, _ = hf_tts.merge(
        [fixture / "model_ema.safetensors", fixture / "model_train.pt"], out_dir=tmp_path / "a", **options
    )
    loads = []

    def recording_load(path, *, mmap=False, trust_pickle=False):
        loads.append((path.name, mmap))
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)

    def refuse(*args, **kwargs):
        raise AssertionError("an upstream safetensors source was read whole")

    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    monkeypatch.setattr(sources, "load_torch_checkpoint", recording_load)
    legacy = tmp_path / "legacy.pt"
    torch.save(torch.load(fixture / "model_train.pt", weights_only=True), legacy, _use_new_zipfile_serialization=False)
    mapped, _ = hf_tts.merge(
        [fixture / "model_ema.safetensors", fixture / "model_train.pt"], out_dir=tmp_path / "b", **options
    )
    with caplog.at_level("WARNING"):
        legacy_merge, _ = hf_tts.merge([fixture / "model_ema.safetensors", legacy], out_dir=tmp_path / "c", **options)
    assert loads == [("model_train.pt", True), ("legacy.pt", False)]
    assert "legacy (pre-1.6) format" in caplog.text
    reference = (expected / "model.safetensors").read_bytes()
    assert (mapped / "model.safetensors").read_bytes() == reference
    assert (legacy_merge / "model.safetensors").read_bytes() == reference


def test_folder_configs_agree_with_defaults_filled_in_and_are_validated(tmp_path):
    """Configs are compared with their defaults filled in: a field written out at its default in one source and left
    out in the other still agrees; a source whose config is invalid is refused (also by a dry run), nothing
    written."""
    first = make_f5_folder(tmp_path / "a", 1)
    second = make_f5_folder(tmp_path / "b", 2)
    config = json.loads((second / "config.json").read_text())
    assert "chunk_size_feed_forward" not in config  # save_pretrained leaves defaults out
    config["chunk_size_feed_forward"] = 0  # the default, written out
    (second / "config.json").write_text(json.dumps(config))
    path, _ = hf_tts.merge([first, second], out_dir=tmp_path / "out")
    assert (path / "model.safetensors").is_file()

    config["cfg_strength"] = float("inf")  # not structural (the files still agree), but invalid
    (second / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="cfg_strength"):
        hf_tts.merge([first, second], out_dir=tmp_path / "bad")
    assert sorted(item.name for item in tmp_path.iterdir()) == ["a", "b", "out"]
    with pytest.raises(InputError, match="cfg_strength"):
        hf_tts.merge([first, second], out_dir=tmp_path / "bad", dry_run=True)
