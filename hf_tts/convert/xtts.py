"""Reader and writer of Coqui XTTS-v2 checkpoints (`model.pth`: `{"model": state_dict, "config": dict, ...}`).

Trainer checkpoints prefix every key with `xtts.` (the `GPTTrainer` wraps `Xtts` as `self.xtts`); released ones do
not. Coqui's `Xtts.load_checkpoint` strips the prefix and deletes the trainer-only modules (the DVAE and the two
mel-spectrogram front ends), so those are left out here too: fine-tunes never train them, and averaging the DVAE's
VQ codebooks would break their `embed = embed_avg / cluster_size` tie. Optimizer, scaler and scheduler states are
never touched, so with a memory-mapped load their bytes are never read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hf_tts.errors import InputError

XTTS_PREFIX = "xtts."
# First key components Coqui's inference loader deletes (`get_compatible_checkpoint_state_dict`).
TRAINER_ONLY_MODULES = frozenset({"dvae", "torch_mel_spectrogram_style_encoder", "torch_mel_spectrogram_dvae"})
# Entries of the XTTS config that fix the network's shape and audio front end.
_FINGERPRINT_SECTIONS = ("model_args", "audio")


@dataclass
class XttsCheckpoint:
    state_dict: dict[str, torch.Tensor]  # keys without the `xtts.` prefix, inference modules only
    config: dict[str, Any]  # the checkpoint's "config" entry (Coqui's XttsConfig as a dict)
    prefix: str  # "xtts." for trainer checkpoints, "" for released ones: written back the same way
    dropped_keys: list[str]  # trainer-only keys left out

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
    """Split a loaded XTTS checkpoint into its inference state dict (prefix removed) and its config."""
    path = Path(path)
    model = checkpoint["model"]
    bad_keys = [key for key in model if not isinstance(key, str)]
    if bad_keys:
        raise InputError(f"{path}: the 'model' state dict has a key {bad_keys[0]!r} that is not a string")
    prefixed = [key for key in model if key.startswith(XTTS_PREFIX)]
    if prefixed and len(prefixed) != len(model):
        unprefixed = sorted(set(model) - set(prefixed))[:3]
        raise InputError(
            f"{path}: some keys start with {XTTS_PREFIX!r} and some do not (e.g. {', '.join(unprefixed)}); "
            "this is not a checkpoint Coqui writes"
        )
    prefix = XTTS_PREFIX if prefixed else ""
    state_dict: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in model.items():
        name = key[len(prefix) :]
        if name.split(".", 1)[0] in TRAINER_ONLY_MODULES:
            dropped.append(key)
            continue
        if not isinstance(value, torch.Tensor):
            raise InputError(f"{path}: model entry {key!r} is a {type(value).__name__}, not a tensor")
        if value.layout != torch.strided or value.is_quantized or value.is_complex():
            # Sparse, quantized and complex tensors have no meaningful elementwise average here.
            raise InputError(
                f"{path}: model entry {key!r} is a {value.layout} {value.dtype} tensor, which cannot be merged"
            )
        state_dict[name] = value
    if not state_dict:
        raise InputError(f"{path}: the checkpoint's 'model' holds no XTTS inference weights")
    config = checkpoint.get("config")
    return XttsCheckpoint(
        state_dict=state_dict,
        config=config if isinstance(config, dict) else {},
        prefix=prefix,
        dropped_keys=sorted(dropped),
    )


def save_xtts_checkpoint(
    path: str | os.PathLike, state_dict: dict[str, torch.Tensor], config: dict[str, Any], prefix: str
) -> None:
    """Write `{"model": ..., "config": ...}` the way Coqui's trainer does, so `Xtts.load_checkpoint` reads it."""
    model = {f"{prefix}{key}": value for key, value in state_dict.items()}
    torch.save({"model": model, "config": config}, path)


__all__ = ["XttsCheckpoint", "is_xtts_checkpoint", "read_xtts_checkpoint", "save_xtts_checkpoint"]
