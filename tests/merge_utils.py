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


# Key layout of an XTTS-v2 fine-tune as Coqui's GPTTrainer saves it (trainer.io.save_model): 627 keys of the wrapped
# `Xtts` under `xtts.` and 60 of the trainer-only modules at top level. Names follow the real modules; the tensors
# here are tiny.
XTTS_GPT_LAYERS = 30
_GPT_LAYER_PARTS = (
    "ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight", "attn.c_proj.bias",
    "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias",
)  # fmt: skip


def xtts_inference_keys() -> list[str]:
    """627 names under `xtts.`: GPT-2 blocks, embeddings and heads, conditioning encoder / perceiver, HiFi-GAN."""
    keys = [f"gpt.gpt.h.{layer}.{part}" for layer in range(XTTS_GPT_LAYERS) for part in _GPT_LAYER_PARTS]
    keys += ["gpt.gpt.ln_f.weight", "gpt.gpt.ln_f.bias", "gpt.text_embedding.weight", "gpt.mel_embedding.weight"]
    keys += ["gpt.text_head.weight", "gpt.text_head.bias", "gpt.mel_head.weight", "gpt.mel_head.bias"]
    keys += ["gpt.final_norm.weight", "gpt.final_norm.bias", "mel_stats"]
    keys += [f"gpt.conditioning_encoder.attn.{i}.{part}" for i in range(6) for part in ("norm.weight", "norm.bias",
             "qkv.weight", "qkv.bias", "proj_out.weight", "proj_out.bias")]  # fmt: skip
    keys += ["gpt.conditioning_encoder.init.weight", "gpt.conditioning_encoder.init.bias"]
    keys += [f"gpt.conditioning_perceiver.layers.{i}.{part}" for i in range(2) for part in ("0.to_q.weight",
             "0.to_kv.weight", "0.to_out.weight", "1.0.weight", "1.0.bias", "1.2.weight", "1.2.bias")]  # fmt: skip
    keys += ["gpt.conditioning_perceiver.latents", "gpt.conditioning_perceiver.norm.gamma"]
    keys += [f"hifigan_decoder.waveform_decoder.resblocks.{i}.convs{j}.{k}.parametrizations.weight.original{o}"
             for i in range(9) for j in (1, 2) for k in range(3) for o in (0, 1)]  # fmt: skip
    keys += [f"hifigan_decoder.waveform_decoder.resblocks.{i}.convs{j}.{k}.bias"
             for i in range(9) for j in (1, 2) for k in range(3)]  # fmt: skip
    keys += [f"hifigan_decoder.speaker_encoder.layer{i}.{part}" for i in range(1, 5)
             for part in ("0.conv1.weight", "0.bn1.weight", "0.bn1.bias", "0.bn1.running_mean")]  # fmt: skip
    missing = 627 - len(keys)
    keys += [f"hifigan_decoder.waveform_decoder.ups.{i}.weight" for i in range(missing)]
    assert len(keys) == 627 == len(set(keys))
    return keys


def xtts_trainer_only_keys() -> list[str]:
    """60 names of the GPTTrainer's own modules (no prefix): the DVAE (with its int64 VQ accumulators) and the two
    mel-spectrogram front ends."""
    keys = [f"dvae.encoder.{i}.{part}" for i in range(6) for part in ("0.weight", "0.bias", "net.0.weight",
            "net.0.bias")]  # fmt: skip
    keys += [f"dvae.decoder.{i}.{part}" for i in range(6) for part in ("0.weight", "0.bias")]
    keys += ["dvae.codebook.embed", "dvae.codebook.cluster_size", "dvae.codebook.embed_avg"]
    keys += ["dvae.discrete_loss.accumulator_index", "dvae.discrete_loss.accumulator_filled"]
    keys += ["dvae.discrete_loss.accumulator", "dvae.codebook.initted"]
    for front_end in ("torch_mel_spectrogram_dvae", "torch_mel_spectrogram_style_encoder"):
        keys += [f"{front_end}.mel_stft.spectrogram.window", f"{front_end}.mel_stft.mel_scale.fb"]
    keys += [f"dvae.decoder.6.{part}" for part in ("weight", "bias")]
    missing = 60 - len(keys)
    keys += [f"dvae.encoder.6.{i}.weight" for i in range(missing)]
    assert len(keys) == 60 == len(set(keys))
    return keys


def make_xtts_checkpoint(
    folder: Path, seed: int, prefix: str = "xtts.", step: int = 100, trainer_extras: bool = True
) -> Path:
    """A `model.pth` as Coqui writes it: a trainer checkpoint (`prefix="xtts."`: 627 `xtts.*` keys plus the 60
    trainer-only keys without prefix; with `trainer_extras` also optimizer, scaler, step, epoch, date, model_loss), or
    a released one (`prefix=""`: the inference keys only). Inference weights depend on `seed`; the trainer-only
    modules (frozen in fine-tuning) do not. Writes config.json / vocab.json beside it."""
    generator = torch.Generator().manual_seed(seed)
    frozen = torch.Generator().manual_seed(12345)
    model = {}
    for key in xtts_inference_keys():
        model[f"{prefix}{key}"] = torch.ones(80) if key == "mel_stats" else torch.randn(4, 3, generator=generator)
    if prefix:
        for key in xtts_trainer_only_keys():
            if key.startswith("dvae.discrete_loss.accumulator_"):
                model[key] = torch.tensor(7, dtype=torch.int64)
            else:
                model[key] = torch.randn(3, 2, generator=frozen)
    config = {
        "model": "xtts",
        "model_args": {"gpt_layers": XTTS_GPT_LAYERS, "gpt_n_model_channels": 4, "tokenizer_file": f"/x/{seed}"},
        "audio": {"sample_rate": 22050, "output_sample_rate": 24000},
    }
    checkpoint = {"model": model, "config": config}
    if trainer_extras:
        checkpoint.update(
            optimizer={"state": {0: {"exp_avg": torch.randn(4, 3, generator=generator)}}, "param_groups": []},
            scaler=None,
            step=step,
            epoch=step // 10,
            date="June 01, 2026",
            model_loss={"train_loss": 0.5, "eval_loss": 0.6},
        )
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, folder / "model.pth")
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (folder / "vocab.json").write_text(json.dumps({"model": {"vocab": {"a": 0, "b": 1}}}), encoding="utf-8")
    return folder / "model.pth"
