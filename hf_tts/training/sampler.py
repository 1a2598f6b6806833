"""Frame-bucketed batches: upstream F5-TTS's frames-per-batch idea (`DynamicBatchSampler`).

Rows are sorted by length and packed greedily into batches whose summed frame count stays within a budget, so a
batch holds clips of similar length (little padding) and about the same amount of audio whatever the clip lengths.
The batch order is shuffled per epoch from `seed + epoch`, so a resumed run sees the same batches in the same order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from hf_tts.errors import InputError

logger = logging.getLogger(__name__)


class FrameBucketBatchSampler(Sampler[list[int]]):
    """Batches of row indices whose lengths sum to at most `max_frames`.

    Args:
        frame_lengths: length of every row (mel frames for F5/E2, motion frames for the motion model).
        max_frames: frame budget of one batch (upstream: `batch_size_per_gpu` with `batch_size_type="frame"`).
        max_samples: upper bound on rows per batch; 0 means no bound (upstream's `max_samples`).
        seed: shuffles the batch order per epoch (`seed + epoch`); None keeps the length-sorted order.
        drop_last: drop the last, possibly short, batch.

    Rows longer than `max_frames` cannot fit any batch and are left out (logged); if that leaves nothing to train
    on, an InputError says to raise the budget.
    """

    def __init__(
        self,
        frame_lengths: Sequence[int],
        max_frames: int,
        *,
        max_samples: int = 0,
        seed: int | None = 0,
        drop_last: bool = False,
    ):
        if max_frames <= 0:
            raise InputError(f"max_frames (frames per batch) must be > 0, got {max_frames}")
        if max_samples < 0:
            raise InputError(f"max_samples must be >= 0 (0 = no limit), got {max_samples}")
        self.max_frames = max_frames
        self.max_samples = max_samples
        self.seed = seed
        self.epoch = 0
        order = sorted(range(len(frame_lengths)), key=lambda index: frame_lengths[index])
        too_long = [index for index in order if frame_lengths[index] > max_frames]
        batches: list[list[int]] = []
        batch: list[int] = []
        batch_frames = 0
        for index in order:
            length = frame_lengths[index]
            if length > max_frames:
                continue
            full = batch_frames + length > max_frames or 0 < max_samples <= len(batch)
            if batch and full:
                batches.append(batch)
                batch, batch_frames = [], 0
            batch.append(index)
            batch_frames += length
        if batch and not drop_last:
            batches.append(batch)
        if too_long:
            logger.warning(
                "%d of %d rows are longer than the batch budget of %d frames and are skipped (longest: %d frames)",
                len(too_long),
                len(frame_lengths),
                max_frames,
                max(frame_lengths[index] for index in too_long),
            )
        if not batches:
            longest = max(frame_lengths, default=0)
            raise InputError(
                f"no batch fits the budget of {max_frames} frames (dataset of {len(frame_lengths)} rows, longest "
                f"{longest} frames); raise --batch-frames to at least {longest}"
            )
        self.batches = batches

    def set_epoch(self, epoch: int) -> None:
        """Called by Trainer at the start of every epoch; selects that epoch's batch order."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        if self.seed is None:
            return iter([list(batch) for batch in self.batches])
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        permutation = torch.randperm(len(self.batches), generator=generator).tolist()
        return iter([list(self.batches[index]) for index in permutation])

    def __len__(self) -> int:
        return len(self.batches)


__all__ = ["FrameBucketBatchSampler"]
