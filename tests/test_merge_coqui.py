"""Coqui XTTS-v2 checkpoints as Coqui writes them: trainer checkpoints (`best_model.pth` / `checkpoint_N.pth` through
`trainer.io.save_model`: 627 `xtts.*` keys, 60 trainer-only keys without the prefix, with or without the trainer's
entries) and released ones, merged back into the layout they came in; what `Xtts.load_checkpoint` and the trainer's
restore read from the result."""

from __future__ import annotations

import json

import pytest
import torch
from huggingface_hub import ModelCard
from merge_utils import make_xtts_checkpoint, tree_sha256, xtts_inference_keys

import hf_tts
from hf_tts.errors import InputError

TOLERANCE = 1e-6


@pytest.mark.parametrize("trainer_extras", [True, False])
def test_xtts_checkpoints_merge_back_into_coqui_layout(tmp_path, trainer_extras):
    """Coqui trainer checkpoints (627 `xtts.*` keys, 60 trainer-only keys without prefix, with or without optimizer,
    step, epoch ...) merge: inference weights averaged under the prefix, trainer-only modules copied, step and epoch
    of the donor kept, optimizer and scaler dropped; inputs untouched."""
    first = make_xtts_checkpoint(tmp_path / "ft_a", seed=1, trainer_extras=trainer_extras)
    second = make_xtts_checkpoint(tmp_path / "ft_b", seed=2, step=300, trainer_extras=trainer_extras)
    before = tree_sha256(tmp_path)
    path, report = hf_tts.merge([first, second], [1.0, 3.0], out_dir=tmp_path / "merged")
    assert tree_sha256(tmp_path / "ft_a") == {
        k.removeprefix("ft_a/"): v for k, v in before.items() if k.startswith("ft_a/")
    }
    checkpoint = torch.load(path / "model.pth", weights_only=True)
    a = torch.load(first, weights_only=True)["model"]
    b = torch.load(second, weights_only=True)["model"]
    assert len(a) == 687 and sum(key.startswith("xtts.") for key in a) == 627
    assert set(checkpoint["model"]) == set(a)
    for key in a:
        if key.startswith("xtts."):
            expected = (a[key] + 3 * b[key]) / 4
        else:  # trainer-only: copied
            expected = a[key]
            assert torch.equal(a[key], b[key])
        torch.testing.assert_close(checkpoint["model"][key], expected, rtol=0, atol=TOLERANCE)
        assert checkpoint["model"][key].dtype == a[key].dtype
    assert checkpoint["config"]["model"] == "xtts"
    extras = {"step": 100, "epoch": 10} if trainer_extras else {}
    assert {key: value for key, value in checkpoint.items() if key not in ("model", "config")} == extras
    assert {"config.json", "vocab.json", "README.md", "merge_recipe.yaml"} <= {p.name for p in path.iterdir()}
    card = ModelCard.load(path / "README.md")
    assert "xtts" in card.data.tags and "merge" in card.data.tags
    assert report.plan.layout == "xtts"
    assert sum(not task.merged for task in report.plan.tasks) == 60


def test_xtts_output_loads_the_way_coqui_does(tmp_path):
    """What `Xtts.load_checkpoint` does to the file (strip `xtts.`, delete the trainer-only modules) leaves exactly
    the merged inference weights; what the trainer's restore reads (every key, step, epoch) is all there."""
    first = make_xtts_checkpoint(tmp_path / "ft_a", seed=1)
    second = make_xtts_checkpoint(tmp_path / "ft_b", seed=2)
    path, _ = hf_tts.merge([first, second], out_dir=tmp_path / "merged")
    checkpoint = torch.load(path / "model.pth", weights_only=True)
    ignored = ("torch_mel_spectrogram_style_encoder", "torch_mel_spectrogram_dvae", "dvae")
    inference = {
        key.removeprefix("xtts."): value
        for key, value in checkpoint["model"].items()
        if key.split(".")[0] not in ignored
    }
    assert sorted(inference) == sorted(xtts_inference_keys())
    assert checkpoint["step"] == 100 and checkpoint["epoch"] == 10


def test_xtts_coqui_loader_when_installed(tmp_path):
    """With coqui-tts importable, its own key filter reads the merged file (skipped otherwise; never installed)."""
    xtts_module = pytest.importorskip("TTS.tts.models.xtts")
    first = make_xtts_checkpoint(tmp_path / "ft_a", seed=1)
    second = make_xtts_checkpoint(tmp_path / "ft_b", seed=2)
    path, _ = hf_tts.merge([first, second], out_dir=tmp_path / "merged")
    model = xtts_module.Xtts.__new__(xtts_module.Xtts)
    state = model.get_compatible_checkpoint_state_dict(str(path / "model.pth"))
    assert sorted(state) == sorted(xtts_inference_keys())


def test_xtts_released_and_trainer_layouts(tmp_path):
    released = make_xtts_checkpoint(tmp_path / "released", seed=1, prefix="", trainer_extras=False)
    finetune = make_xtts_checkpoint(tmp_path / "finetune", seed=2)
    path, _ = hf_tts.merge([released, finetune], out_dir=tmp_path / "merged")
    # The first source decides the layout: no prefix, no trainer-only modules, no trainer entries.
    written = torch.load(path / "model.pth", weights_only=True)
    assert sorted(written["model"]) == sorted(xtts_inference_keys()) and set(written) == {"model", "config"}
    with pytest.raises(InputError, match="released checkpoint without them"):
        hf_tts.merge([finetune, released], out_dir=tmp_path / "reversed")
    other = make_xtts_checkpoint(tmp_path / "other", seed=3)
    config = json.loads((tmp_path / "other" / "config.json").read_text())
    config["model_args"]["gpt_layers"] = 3
    checkpoint = torch.load(other, weights_only=True)
    checkpoint["config"] = config
    torch.save(checkpoint, other)
    with pytest.raises(InputError, match=r"model_args\.gpt_layers: 30 vs 3"):
        hf_tts.merge([released, other], out_dir=tmp_path / "bad")


def test_xtts_differing_trainer_modules_refused(tmp_path):
    first = make_xtts_checkpoint(tmp_path / "ft_a", seed=1)
    second = make_xtts_checkpoint(tmp_path / "ft_b", seed=2)
    checkpoint = torch.load(second, weights_only=True)
    checkpoint["model"]["dvae.codebook.embed"] = checkpoint["model"]["dvae.codebook.embed"] + 1
    torch.save(checkpoint, second)
    with pytest.raises(InputError, match="trainer-only module .* differs"):
        hf_tts.merge([first, second], out_dir=tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
