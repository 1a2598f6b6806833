"""Builders of small merge inputs for the merge tests: package folders of tiny F5 models, raw safetensors folders,
XTTS-style checkpoints."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hf_tts import F5TTSConfig, F5TTSModel

VOCAB = ["a", "b", "c", " ", "d", "e"]


def tiny_f5_config(**overrides) -> F5TTSConfig:
    fields = dict(
        dim=32, depth=2, heads=2, dim_head=16, text_dim=16, conv_layers=1, text_num_embeds=len(VOCAB), mel_dim=20
    )
    return F5TTSConfig(**{**fields, **overrides})


def make_f5_folder(path: Path, seed: int, vocab: list[str] = VOCAB, **config_overrides) -> Path:
    """save_pretrained of a tiny F5TTSModel with every parameter drawn from N(0, 1) (seeded) plus its vocab.txt."""
    torch.manual_seed(seed)
    model = F5TTSModel(tiny_f5_config(**config_overrides))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_()
    model.save_pretrained(path)
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return path


def rewrite_weights(folder: Path, edit) -> None:
    """Load the folder's weights, apply `edit(state_dict)` (in place) and save them back."""
    state = load_file(folder / "model.safetensors")
    edit(state)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def tree_sha256(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `folder`."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def make_xtts_checkpoint(folder: Path, seed: int, prefix: str = "xtts.", step: int = 100) -> Path:
    """An XTTS-v2 trainer checkpoint in Coqui's layout: GPT + HiFi-GAN keys with the `xtts.` prefix, a DVAE with its
    int64 accumulator buffers and an optimizer entry, next to config.json / vocab.json."""
    generator = torch.Generator().manual_seed(seed)
    model = {
        f"{prefix}gpt.text_embedding.weight": torch.randn(8, 4, generator=generator),
        f"{prefix}gpt.gpt.h.0.attn.c_attn.weight": torch.randn(4, 12, generator=generator),
        f"{prefix}gpt.gpt.h.1.attn.c_attn.weight": torch.randn(4, 12, generator=generator),
        f"{prefix}hifigan_decoder.waveform_decoder.conv_pre.weight": torch.randn(3, 4, 5, generator=generator),
        f"{prefix}mel_stats": torch.ones(80),
        f"{prefix}dvae.codebook.embed": torch.randn(6, 4, generator=generator),
        f"{prefix}dvae.discrete_loss.accumulator_index": torch.tensor(seed, dtype=torch.int64),
    }
    config = {
        "model": "xtts",
        "model_args": {"gpt_layers": 2, "gpt_n_model_channels": 4, "tokenizer_file": f"/x/{seed}"},
    }
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model, "config": config, "optimizer": {"state": {}}, "step": step}, folder / "model.pth")
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (folder / "vocab.json").write_text(json.dumps({"model": {"vocab": {"a": 0, "b": 1}}}), encoding="utf-8")
    return folder / "model.pth"
