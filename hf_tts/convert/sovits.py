"""Reader of GPT-SoVITS s2 (SoVITS) `.pth` exports: the semantic front end (`ssl_proj` + residual VQ) only.

Files are `{"weight": state_dict, "config": hps, "info": ...}` (fine-tuned exports hold fp16 tensors); v2Pro /
v2ProPlus / LoRA exports overwrite the zip magic `PK` with a 2-byte version tag, which is restored before loading.
`hps` is a pickled instance of GPT-SoVITS' `utils.HParams` (a plain attribute bag): it is read with
`weights_only=True` by allowing exactly that class name, rebuilt as the inert `HParams` stand-in below (nothing of
GPT-SoVITS is imported or executed).
Keys read: `ssl_proj.{weight,bias}` and `quantizer.vq.layers.{i}._codebook.{inited,cluster_size,embed,embed_avg}`;
everything else (text encoder, flow, decoder, ...) belongs to the synthesizer and is ignored. The quantizer's shape
(ssl_dim, n_q, bins) and frame rate (kernel 2 = "25hz", 1 = "50hz") come from the weights.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import torch

from hf_tts.errors import CheckpointMismatchError
from hf_tts.file_utils import load_torch_checkpoint
from hf_tts.models.cfg_motion.configuration_cfg_motion import VoiceQuantizerConfig

# Version tags GPT-SoVITS reads in place of the zip magic (process_ckpt.py `head2version`): v1, v2, v3, LoRA v3,
# LoRA v4, v2Pro, v2ProPlus.
VERSION_HEADERS = (b"00", b"01", b"02", b"03", b"04", b"05", b"06")
# Where GPT-SoVITS' HParams class lives when its training scripts pickle the `config` entry.
HPARAMS_CLASS_PATHS = ("utils.HParams", "GPT_SoVITS.utils.HParams")


class HParams:
    """Inert stand-in for GPT-SoVITS' `utils.HParams` (unpickled attributes only; no code of GPT-SoVITS runs)."""


def _load_allowing_hparams(path: Path) -> dict:
    with torch.serialization.safe_globals([(HParams, name) for name in HPARAMS_CLASS_PATHS]):
        return load_torch_checkpoint(path)


CODEBOOK_KEY = re.compile(r"^quantizer\.vq\.layers\.(\d+)\._codebook\.(inited|cluster_size|embed|embed_avg)$")


def _load_export(path: Path) -> dict:
    with open(path, "rb") as handle:
        header = handle.read(2)
    if header not in VERSION_HEADERS:
        return _load_allowing_hparams(path)
    # Restore the zip magic in a temporary copy; the user's file is never modified.
    with tempfile.TemporaryDirectory() as scratch:
        restored = Path(scratch) / path.name
        shutil.copyfile(path, restored)
        with open(restored, "r+b") as handle:
            handle.write(b"PK")
        return _load_allowing_hparams(restored)


def read_sovits_quantizer(path: str | Path) -> tuple[VoiceQuantizerConfig, dict[str, torch.Tensor]]:
    """(quantizer config, state dict for `VoiceQuantizer`) from a GPT-SoVITS s2 `.pth` export, in float32. Every
    tensor read must be a finite floating-point tensor."""
    from hf_tts.convert.f5 import check_weight_tensor

    path = Path(path)
    checkpoint = _load_export(path)
    weights = checkpoint.get("weight") if isinstance(checkpoint, dict) else None
    if not isinstance(weights, dict):
        raise CheckpointMismatchError(f"{path} has no 'weight' state dict (expected a GPT-SoVITS s2 export)")
    for key in ("ssl_proj.weight", "ssl_proj.bias"):
        if key not in weights:
            raise CheckpointMismatchError(f"{path}: key {key!r} is missing; is this a GPT-SoVITS s2 (SoVITS) export?")
        check_weight_tensor(weights[key], f"{path}: weight {key}")
    if weights["ssl_proj.weight"].ndim != 3:
        raise CheckpointMismatchError(
            f"{path}: ssl_proj.weight has shape {tuple(weights['ssl_proj.weight'].shape)}; expected (D, D, kernel)"
        )
    ssl_out, ssl_in, kernel = weights["ssl_proj.weight"].shape
    if ssl_out != ssl_in or kernel not in (1, 2):
        raise CheckpointMismatchError(
            f"{path}: ssl_proj.weight has shape {(ssl_out, ssl_in, kernel)}; expected (D, D, 2) at 25 Hz or (D, D, 1)"
        )
    state_dict = {"ssl_proj.weight": weights["ssl_proj.weight"], "ssl_proj.bias": weights["ssl_proj.bias"]}
    levels: dict[int, set[str]] = {}
    for key, tensor in weights.items():
        match = CODEBOOK_KEY.match(key)
        if match:
            level, buffer = int(match.group(1)), match.group(2)
            check_weight_tensor(tensor, f"{path}: weight {key}")
            levels.setdefault(level, set()).add(buffer)
            state_dict[f"quantizer.layers.{level}.codebook.{buffer}"] = tensor
    if sorted(levels) != list(range(len(levels))) or not levels:
        raise CheckpointMismatchError(f"{path}: quantizer levels {sorted(levels)} are not 0..n_q-1")
    for level, buffers in levels.items():
        if buffers != {"inited", "cluster_size", "embed", "embed_avg"}:
            missing = {"inited", "cluster_size", "embed", "embed_avg"} - buffers
            raise CheckpointMismatchError(f"{path}: quantizer level {level} lacks {sorted(missing)}")
    if weights["quantizer.vq.layers.0._codebook.embed"].ndim != 2:
        raise CheckpointMismatchError(f"{path}: the level-0 codebook is not a (bins, dim) matrix")
    bins, dim = weights["quantizer.vq.layers.0._codebook.embed"].shape
    if dim != ssl_out:
        raise CheckpointMismatchError(f"{path}: codebook width {dim} differs from ssl_proj width {ssl_out}")
    config = VoiceQuantizerConfig(
        enabled=True, ssl_dim=int(ssl_out), n_q=len(levels), bins=int(bins), semantic_frame_rate=f"{50 // kernel}hz"
    )
    return config, {key: tensor.float().contiguous() for key, tensor in state_dict.items()}


__all__ = ["HParams", "read_sovits_quantizer"]
