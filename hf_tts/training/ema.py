"""Exponential moving average of the weights during `Trainer` training, as a `TrainerCallback`.

The schedule is upstream F5-TTS's: its trainer wraps the model in `ema_pytorch.EMA(model)` with the library
defaults (beta 0.9999, update_after_step 100, update_every 10, inv_gamma 1, power 2/3, min_value 0) and calls
`update()` once per optimizer step. Reproduced here:

- a counter `num_updates` counts optimizer steps (ema_pytorch's `step`);
- only every `update_every`-th step does anything; up to `update_after_step` the average is a plain copy of the
  weights; afterwards `ema -= (1 - decay) * (ema - weights)` with the warm-up decay
  `decay = clamp(1 - (1 + n / inv_gamma) ** -power, min_decay, max_decay)`, `n` being the number of optimizer
  steps since `update_after_step`.

The average covers every floating-point entry of `model.state_dict()` (parameters and saved buffers), so a frozen
tensor keeps its exact value. It is written beside every Trainer checkpoint as `ema.safetensors` and read back on
resume; `ema_state_dict(model)` gives a full state dict with the averaged weights, which `save_finetuned_model`
stores as the model's default weights.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hf_tts.errors import CheckpointMismatchError, InputError

logger = logging.getLogger(__name__)

EMA_WEIGHTS_NAME = "ema.safetensors"


class EMACallback(TrainerCallback):
    """Keeps an exponential moving average of the model's weights (upstream F5-TTS's EMA schedule).

    Args:
        max_decay: the decay the warm-up approaches (ema_pytorch's `beta`; upstream 0.9999).
        update_after_step: optimizer steps during which the average is a plain copy of the weights (upstream 100).
        update_every: average once every this many optimizer steps (upstream 10).
        inv_gamma, power, min_decay: warm-up shape (upstream 1.0, 2/3, 0.0).
    """

    def __init__(
        self,
        max_decay: float = 0.9999,
        update_after_step: int = 100,
        update_every: int = 10,
        inv_gamma: float = 1.0,
        power: float = 2 / 3,
        min_decay: float = 0.0,
    ):
        if not 0.0 <= min_decay <= max_decay < 1.0:
            raise InputError(
                f"EMA decays must satisfy 0 <= min_decay <= max_decay < 1, got min {min_decay}, max {max_decay}"
            )
        if update_every < 1 or update_after_step < 0 or inv_gamma <= 0:
            raise InputError(
                f"EMA needs update_every >= 1, update_after_step >= 0 and inv_gamma > 0; got {update_every}, "
                f"{update_after_step}, {inv_gamma}"
            )
        self.max_decay = max_decay
        self.update_after_step = update_after_step
        self.update_every = update_every
        self.inv_gamma = inv_gamma
        self.power = power
        self.min_decay = min_decay
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] | None = None

    # -- the average ------------------------------------------------------------------------------------------
    def current_decay(self) -> float:
        """Decay used by the averaging step that `num_updates` (already counted) belongs to."""
        steps_averaged = self.num_updates - self.update_after_step - 1
        if steps_averaged <= 0:
            return 0.0
        value = 1.0 - (1.0 + steps_averaged / self.inv_gamma) ** -self.power
        return min(max(value, self.min_decay), self.max_decay)

    @staticmethod
    def _averaged_entries(model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {name: tensor for name, tensor in model.state_dict().items() if tensor.is_floating_point()}

    @torch.no_grad()
    def copy_from(self, model: torch.nn.Module) -> None:
        """Set the average to the model's current weights."""
        self.shadow = {name: tensor.detach().clone() for name, tensor in self._averaged_entries(model).items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """One optimizer step happened: count it and average on the schedule."""
        if self.shadow is None:
            self.copy_from(model)
        step = self.num_updates
        self.num_updates += 1
        if step % self.update_every != 0:
            return
        if step <= self.update_after_step:
            self.copy_from(model)
            return
        decay = self.current_decay()
        for name, weight in self._averaged_entries(model).items():
            average = self.shadow[name]
            average.sub_((average - weight.detach().to(average.dtype)) * (1.0 - decay))

    def ema_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """`model.state_dict()` with the averaged weights in place of the trained ones."""
        if self.shadow is None:
            raise RuntimeError("the EMA has not been initialised; it starts when training begins")
        state = dict(model.state_dict())
        state.update({name: average.to(state[name].dtype) for name, average in self.shadow.items()})
        return state

    # -- files ------------------------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> Path:
        """Write the average and its step counter to `folder/ema.safetensors`."""
        if self.shadow is None:
            raise RuntimeError("the EMA has not been initialised; nothing to save")
        path = Path(folder) / EMA_WEIGHTS_NAME
        tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in self.shadow.items()}
        save_file(tensors, str(path), metadata={"num_updates": str(self.num_updates)})
        return path

    def load(self, folder: str | os.PathLike, model: torch.nn.Module) -> None:
        """Read `folder/ema.safetensors` (written by `save`) for `model`; names and shapes must match."""
        path = Path(folder) / EMA_WEIGHTS_NAME
        if not path.is_file():
            raise InputError(
                f"{path} is missing: the checkpoint was saved without an EMA, so training cannot resume identically"
            )
        with safe_open(str(path), framework="pt") as handle:
            num_updates = int((handle.metadata() or {}).get("num_updates", "-1"))
        if num_updates < 0:
            raise InputError(f"{path} has no num_updates metadata; it was not written by hf_tts' EMACallback")
        expected = self._averaged_entries(model)
        stored = load_file(str(path))
        if set(stored) != set(expected):
            missing, unexpected = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
            raise CheckpointMismatchError(
                f"{path} does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
        for name, tensor in stored.items():
            if tensor.shape != expected[name].shape:
                raise CheckpointMismatchError(
                    f"{path}: {name} has shape {tuple(tensor.shape)}, the model has {tuple(expected[name].shape)}"
                )
        self.shadow = {name: tensor.to(expected[name].device) for name, tensor in stored.items()}
        self.num_updates = num_updates

    # -- Trainer events ---------------------------------------------------------------------------------------
    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kwargs
    ):
        if self.shadow is not None:
            return
        if state.global_step > 0:
            # Resumed without HfTtsTrainer (which loads the EMA explicitly): Trainer resumes from the output folder.
            checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            self.load(checkpoint, model)
            logger.info("EMA restored from %s (%d updates)", checkpoint, self.num_updates)
            return
        self.copy_from(model)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kwargs):
        self.update(model)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if state.is_world_process_zero:
            self.save(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")


__all__ = ["EMA_WEIGHTS_NAME", "EMACallback"]
