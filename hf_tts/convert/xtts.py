"""Reader and writer of Coqui XTTS-v2 checkpoints (`model.pth`, `best_model.pth`, `checkpoint_N.pth`:
`{"model": state_dict, "config": dict, ...}`).

Coqui's `GPTTrainer` (saved by `trainer.io.save_model`) holds the inference model as `self.xtts`, so those keys carry
the `xtts.` prefix, and beside it three trainer-only modules at top level, without the prefix: `dvae.*` (the frozen
DiscreteVAE that makes the audio codes), `torch_mel_spectrogram_dvae.*` and `torch_mel_spectrogram_style_encoder.*`
(mel front ends). 687 keys for XTTS-v2: 627 `xtts.*` and 60 trainer-only. The trainer adds `optimizer`, `scaler`,
`step`, `epoch`, `date`, `model_loss` / `model_losses` and, in the idiap fork, `scheduler`. Released checkpoints have
neither the prefix nor the trainer-only modules.

`Xtts.load_checkpoint` strips `xtts.` and deletes keys whose first component is a trainer-only module; the trainer
(`--restore_path`, `--continue_path`) loads every key into the GPTTrainer. So a merge keeps the layout it read: the
inference weights are merged and written back under the same prefix, the trainer-only modules are copied (fine-tunes
never train them, every source must hold the same values; averaging the DVAE's VQ codebooks would break their
`embed = embed_avg / cluster_size` tie), and `step` / `epoch` of the config donor are kept so the trainer resumes.
Optimizer, scaler and scheduler states belong to one run's weights, not to a merge: they are never read (with a
memory-mapped load their bytes stay on disk) nor written, and the trainer then restores the model alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hf_tts.errors import InputError

XTTS_PREFIX = "xtts."
# Top-level modules of Coqui's GPTTrainer besides `xtts`; `Xtts.load_checkpoint` deletes them.
TRAINER_ONLY_MODULES = frozenset({"dvae", "torch_mel_spectrogram_style_encoder", "torch_mel_spectrogram_dvae"})
# Trainer entries written back with a merge so the trainer's restore finds where the donor left off.
KEPT_TRAINER_ENTRIES = ("step", "epoch")
# Entries of the XTTS config that fix the network's shape and audio front end.
_FINGERPRINT_SECTIONS = ("model_args", "audio")


def is_trainer_only(key: str) -> bool:
    """Whether a checkpoint key belongs to a trainer-only module (with or without the `xtts.` prefix, which old
    exports put in front of everything)."""
    return key.removeprefix(XTTS_PREFIX).split(".", 1)[0] in TRAINER_ONLY_MODULES


@dataclass
class XttsCheckpoint:
    # Inference weights without the `xtts.` prefix; trainer-only tensors under their key as stored (copied, never
    # merged: see `is_trainer_only`).
    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any]  # the checkpoint's "config" entry (Coqui's XttsConfig as a dict)
    prefix: str  # "xtts." for trainer checkpoints, "" for released ones: written back the same way
    trainer_entries: dict[str, Any]  # step / epoch of a trainer checkpoint (empty for released ones)

    @property
    def fingerprint(self) -> dict[str, Any]:
        """The config fields that decide the network shape (numbers, flags), not file paths or training settings."""
        fingerprint: dict[str, Any] = {"model": self.config.get("model")}
        for section in _FINGERPRINT_SECTIONS:
            values = self.config.get(section)
            if not isinstance(values, dict):
                # Missing, or not a mapping (a damaged config): compared as it is, so two sources still must agree.
                fingerprint[section] = values if values is None or isinstance(values, (bool, int, float, str)) else "?"
                continue
            for key, value in sorted(values.items(), key=lambda item: str(item[0])):
                if value is None or isinstance(value, (bool, int, float)):
                    fingerprint[f"{section}.{key}"] = value
        return fingerprint


def is_xtts_checkpoint(checkpoint: Any) -> bool:
    """Whether a loaded `.pth` has the Coqui layout: a "model" state dict of XTTS modules (with or without prefix)."""
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        return False
    config = checkpoint.get("config")
    if isinstance(config, dict) and config.get("model") == "xtts":
        return True
    return any(isinstance(key, str) and key.startswith((XTTS_PREFIX, "gpt.")) for key in checkpoint["model"])


def read_xtts_checkpoint(path: str | os.PathLike, checkpoint: dict) -> XttsCheckpoint:
    """Split a loaded XTTS checkpoint into its weights (inference keys without prefix, trainer-only keys as stored),
    its config and the trainer entries a merge keeps."""
    path = Path(path)
    model = checkpoint["model"]
    bad_keys = [key for key in model if not isinstance(key, str)]
    if bad_keys:
        raise InputError(f"{path}: the 'model' state dict has a key {bad_keys[0]!r} that is not a string")
    prefixed = any(key.startswith(XTTS_PREFIX) for key in model)
    stray = sorted(key for key in model if not key.startswith(XTTS_PREFIX) and not is_trainer_only(key))
    if prefixed and stray:
        raise InputError(
            f"{path}: {len(stray)} keys lack the {XTTS_PREFIX!r} prefix without belonging to a trainer-only module "
            f"({', '.join(sorted(TRAINER_ONLY_MODULES))}), e.g. {', '.join(stray[:3])}; this is not a checkpoint "
            "Coqui writes"
        )
    prefix = XTTS_PREFIX if prefixed else ""
    state_dict: dict[str, torch.Tensor] = {}
    for key, value in model.items():
        if not isinstance(value, torch.Tensor):
            raise InputError(f"{path}: model entry {key!r} is a {type(value).__name__}, not a tensor")
        if value.layout != torch.strided or value.is_quantized or value.is_complex():
            # Sparse, quantized and complex tensors have no meaningful elementwise average here.
            raise InputError(
                f"{path}: model entry {key!r} is a {value.layout} {value.dtype} tensor, which cannot be merged"
            )
        state_dict[key if is_trainer_only(key) else key[len(prefix) :]] = value
    if not any(not is_trainer_only(key) for key in state_dict):
        raise InputError(f"{path}: the checkpoint's 'model' holds no XTTS inference weights")
    config = checkpoint.get("config")
    trainer_entries = {
        name: checkpoint[name]
        for name in KEPT_TRAINER_ENTRIES
        if isinstance(checkpoint.get(name), int) and not isinstance(checkpoint.get(name), bool)
    }
    return XttsCheckpoint(
        state_dict=state_dict,
        config=config if isinstance(config, dict) else {},
        prefix=prefix,
        trainer_entries=trainer_entries,
    )


def save_xtts_checkpoint(
    path: str | os.PathLike,
    state_dict: dict[str, torch.Tensor],
    config: dict[str, Any],
    prefix: str,
    trainer_entries: dict[str, Any] | None = None,
) -> None:
    """Write `{"model", "config", ...}` in the layout it was read from: inference keys under `prefix`, trainer-only
    keys as they were, plus the kept trainer entries, so `Xtts.load_checkpoint` and the trainer both read it."""
    model = {key if is_trainer_only(key) else f"{prefix}{key}": value for key, value in state_dict.items()}
    torch.save({"model": model, "config": config, **(trainer_entries or {})}, path)


__all__ = ["XttsCheckpoint", "is_trainer_only", "is_xtts_checkpoint", "read_xtts_checkpoint", "save_xtts_checkpoint"]
