"""`Trainer` for the package's models: frame-bucketed batches, EMA resume, and saving the result.

`transformers.Trainer` trains `F5TTSModel` / `E2TTSModel` / `CFGMotionModel` as they are: their `forward` returns a
`ModelOutput` whose first field is the loss, and takes no `**kwargs`, so Trainer never passes `num_items_in_batch`
and divides each micro-batch loss (a mean) by the gradient-accumulation steps. `HfTtsTrainer` adds what the plain
Trainer lacks:

- batches bucketed by frame count (`FrameBucketBatchSampler`) when `batch_frames` is given, and the prepared
  columns kept for the collator (`remove_unused_columns` off);
- resuming restores the `EMACallback`'s average from the checkpoint before training continues;
- the losses are means, never normalised by a token count (`loss_is_scaled_for_ga = False`).

`save_trained_model` writes the final folder: the EMA weights as `model.safetensors` (what `from_pretrained` loads)
and the trained ("online") weights as the `online` variant (`from_pretrained(path, variant="online")`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.trainer_utils import get_last_checkpoint

from hf_tts.errors import InputError
from hf_tts.training.ema import EMACallback
from hf_tts.training.sampler import FrameBucketBatchSampler

ONLINE_VARIANT = "online"


class HfTtsTrainer(Trainer):
    """`Trainer` with frame-bucketed batches and EMA-aware resume.

    Args (besides Trainer's):
        batch_frames: frame budget per batch; None uses Trainer's fixed `per_device_train_batch_size`.
        length_column: dataset column holding each row's frame count (for bucketing).
        max_samples: most rows in one bucketed batch (0: no limit).
    """

    # The models return a mean loss per micro-batch; Trainer must divide it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self, *args, batch_frames: int | None = None, length_column: str = "num_frames", max_samples: int = 0, **kwargs
    ):
        super().__init__(*args, **kwargs)
        # The collators read prepared columns (text_ids, num_frames, audio...) that are not forward arguments;
        # Trainer's default column pruning would drop them before the collator sees them.
        self.args.remove_unused_columns = False
        self.batch_frames = batch_frames
        self.length_column = length_column
        self.max_samples = max_samples

    @property
    def ema_callbacks(self) -> list[EMACallback]:
        return [callback for callback in self.callback_handler.callbacks if isinstance(callback, EMACallback)]

    def get_train_dataloader(self) -> DataLoader:
        if self.batch_frames is None:
            return super().get_train_dataloader()
        dataset = self.train_dataset
        if self.length_column not in dataset.column_names:
            raise InputError(
                f"frame bucketing needs a {self.length_column!r} column with each row's frame count; the dataset has "
                f"{', '.join(dataset.column_names)}"
            )
        lengths = [int(length) for length in dataset[self.length_column]]
        batch_sampler = FrameBucketBatchSampler(
            lengths, self.batch_frames, max_samples=self.max_samples, seed=self.args.seed
        )
        loader = DataLoader(
            dataset,
            batch_sampler=batch_sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory and torch.cuda.is_available(),
            persistent_workers=self.args.dataloader_persistent_workers and self.args.dataloader_num_workers > 0,
        )
        return self.accelerator.prepare(loader)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise InputError(f"no checkpoint to resume from in {self.args.output_dir}")
        if resume_from_checkpoint:
            for callback in self.ema_callbacks:
                callback.load(resume_from_checkpoint, self.model)
        return super().train(resume_from_checkpoint=resume_from_checkpoint or None, **kwargs)


def save_trained_model(
    folder: str | os.PathLike,
    model: Any,
    *,
    ema: EMACallback | None = None,
    tokenizer: Any = None,
) -> Path:
    """Write `model` into `folder` (which must exist): the EMA weights as the default `model.safetensors` and the
    trained weights as `model.online.safetensors` when `ema` is given, otherwise the trained weights only; plus the
    config and the tokenizer's files."""
    folder = Path(folder)
    if ema is not None:
        model.save_pretrained(folder, state_dict=ema.ema_state_dict(model))
        model.save_pretrained(folder, variant=ONLINE_VARIANT)
    else:
        model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def loss_history(trainer: Trainer) -> list[tuple[int, float]]:
    """(step, loss) of every training log entry so far."""
    return [(entry["step"], float(entry["loss"])) for entry in trainer.state.log_history if "loss" in entry]


def bf16_available() -> bool:
    """Whether training can use bf16 mixed precision here (a CUDA GPU with bf16 support)."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


__all__ = ["ONLINE_VARIANT", "HfTtsTrainer", "bf16_available", "loss_history", "save_trained_model"]
