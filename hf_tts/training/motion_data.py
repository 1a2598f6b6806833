"""Training data for `CFGMotionModel`: rows of conditioning features, motion and an optional valid-frame mask.

A row holds `cond_features` (L, cond_feature_dim) — or (L, quantizer.ssl_dim) SSL features when the model has a
voice quantizer —, `motion` (T, nfeats) and optionally `mask` (T,) and `keyframes`. `prepare_motion_dataset` checks
the widths against the config and adds `num_frames` (T, for frame bucketing); `MotionDataCollator` pads a batch
into `model(**batch)` arguments. Upstream trains on fixed-length windows, where no padding happens; with rows of
different lengths, motion is zero-padded and masked out of the loss, and conditioning is zero-padded (the denoiser
has no conditioning mask, so keep a bucket's rows about equally long).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

from hf_tts.errors import InputError

MOTION_COLUMNS = ("cond_features", "motion")


def _feature_width(config: Any) -> int:
    quantizer = getattr(config, "quantizer", None)
    return quantizer.ssl_dim if quantizer is not None and quantizer.enabled else config.cond_feature_dim


def prepare_motion_dataset(dataset: Any, config: Any) -> Any:
    """Check `dataset` (a `datasets.Dataset` of motion rows) against `config` and add `num_frames`."""
    from datasets import Dataset

    if not isinstance(dataset, Dataset):
        raise InputError(f"expected a datasets.Dataset of motion rows, got {type(dataset).__name__}")
    missing = [column for column in MOTION_COLUMNS if column not in dataset.column_names]
    if missing:
        raise InputError(
            f"motion rows need columns {', '.join(MOTION_COLUMNS)} (optional: mask, keyframes); missing "
            f"{', '.join(missing)} (columns: {', '.join(dataset.column_names)})"
        )
    if len(dataset) == 0:
        raise InputError("the motion dataset is empty")
    width = _feature_width(config)
    rows = dataset.with_format("torch")
    for index in range(len(rows)):
        row = rows[index]
        motion, features = row["motion"], row["cond_features"]
        if motion.ndim != 2 or motion.shape[1] != config.nfeats:
            raise InputError(f"row {index}: motion must be (frames, {config.nfeats}), got {tuple(motion.shape)}")
        if features.ndim != 2 or features.shape[1] != width:
            raise InputError(f"row {index}: cond_features must be (length, {width}), got {tuple(features.shape)}")
        if "mask" in row and tuple(row["mask"].shape) != (motion.shape[0],):
            raise InputError(f"row {index}: mask must be ({motion.shape[0]},), got {tuple(row['mask'].shape)}")
    frames = [len(motion) for motion in dataset["motion"]]
    return dataset.add_column("num_frames", frames).with_format("torch")


class MotionDataCollator:
    """Pads motion rows into `CFGMotionModel.forward` arguments: `motion` (B, T, nfeats), `mask` (B, T) (row mask
    and padding), `cond_features` (B, L, C) and, when the rows have them, `keyframes`."""

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        motions = [torch.as_tensor(row["motion"], dtype=torch.float32) for row in rows]
        masks = [
            torch.as_tensor(row["mask"], dtype=torch.bool) if "mask" in row else torch.ones(len(m), dtype=torch.bool)
            for row, m in zip(rows, motions)
        ]
        batch = {
            "motion": pad_sequence(motions, batch_first=True),
            "mask": pad_sequence(masks, batch_first=True, padding_value=False),
            "cond_features": pad_sequence(
                [torch.as_tensor(row["cond_features"], dtype=torch.float32) for row in rows], batch_first=True
            ),
        }
        if "keyframes" in rows[0]:
            batch["keyframes"] = pad_sequence(
                [torch.as_tensor(row["keyframes"], dtype=torch.float32) for row in rows], batch_first=True
            )
        return batch


__all__ = ["MotionDataCollator", "prepare_motion_dataset"]
