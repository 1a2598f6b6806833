"""The motion model trains through the same Trainer path on (cond_features, motion, mask) rows, and a frozen voice
quantizer (`freeze_quantizer=True`) comes out bit for bit unchanged, EMA included; unfrozen, it trains."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import TrainingArguments

from hf_tts import CFGMotionConfig, CFGMotionModel
from hf_tts.training import EMACallback, HfTtsTrainer
from hf_tts.training.motion_data import MotionDataCollator, prepare_motion_dataset
from hf_tts.training.trainer import loss_history

STEPS = 6
TINY = dict(latent_dim=16, heads=2, layers=1, ff_size=32, cond_feature_dim=8, max_cond_len=32, dropout=0.0, nfeats=6)
QUANTIZER = {"enabled": True, "ssl_dim": 8, "n_q": 2, "bins": 4, "kmeans_init": False}


def motion_rows(count: int = 8) -> Dataset:
    rng = np.random.default_rng(0)
    rows = {"cond_features": [], "motion": [], "mask": []}
    for index in range(count):
        frames = 10 + index % 4
        phase = np.linspace(0, 2 * np.pi, frames)[:, None] * (1 + np.arange(6))[None, :] / 6
        rows["motion"].append(np.sin(phase + index).astype(np.float32))
        rows["cond_features"].append(rng.standard_normal((20, 8)).astype(np.float32))
        mask = np.ones(frames, dtype=bool)
        mask[-1] = index % 2 == 0  # some rows mark their last frame invalid
        rows["mask"].append(mask)
    return Dataset.from_dict(rows)


def train_motion(tmp_path, freeze_quantizer: bool):
    torch.manual_seed(0)
    config = CFGMotionConfig(architecture="body", quantizer=QUANTIZER, freeze_quantizer=freeze_quantizer, **TINY)
    model = CFGMotionModel(config)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    ema = EMACallback(update_after_step=1, update_every=1)
    args = TrainingArguments(
        output_dir=str(tmp_path / f"motion-{freeze_quantizer}"),
        max_steps=STEPS,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        remove_unused_columns=False,
    )
    trainer = HfTtsTrainer(
        model=model,
        args=args,
        train_dataset=prepare_motion_dataset(motion_rows(), config),
        data_collator=MotionDataCollator(),
        callbacks=[ema],
        batch_frames=36,
    )
    trainer.train()
    return trainer, ema, before


def test_collator_pads_motion_and_combines_masks():
    rows = prepare_motion_dataset(motion_rows(3), CFGMotionConfig(architecture="body", **TINY))
    batch = MotionDataCollator()([rows[0], rows[1]])
    assert batch["motion"].shape == (2, 11, 6) and batch["cond_features"].shape == (2, 20, 8)
    assert batch["mask"].tolist() == [[True] * 10 + [False], [True] * 10 + [False]]
    assert torch.equal(batch["motion"][0, 10], torch.zeros(6))


def test_frozen_quantizer_is_unchanged_bit_for_bit(tmp_path):
    trainer, ema, before = train_motion(tmp_path, freeze_quantizer=True)
    losses = [loss for _, loss in loss_history(trainer)]
    assert len(losses) == STEPS and all(np.isfinite(losses))
    after = trainer.model.state_dict()
    quantizer = [name for name in after if name.startswith("voice_quantizer.")]
    assert quantizer, "the tiny model must have a voice quantizer"
    for name in quantizer:
        assert torch.equal(after[name], before[name]), name
        if name in ema.shadow:
            assert torch.equal(ema.shadow[name], before[name]), name
    assert any(not torch.equal(after[name], before[name]) for name in after if name.startswith("denoiser."))


def test_unfrozen_quantizer_trains(tmp_path):
    trainer, _, before = train_motion(tmp_path, freeze_quantizer=False)
    after = trainer.model.state_dict()
    assert any(not torch.equal(after[name], before[name]) for name in after if name.startswith("voice_quantizer."))


def test_motion_rows_are_checked_against_the_config():
    config = CFGMotionConfig(architecture="body", **TINY)
    with pytest.raises(ValueError, match="motion must be \\(frames, 6\\)"):
        prepare_motion_dataset(
            Dataset.from_dict({"cond_features": [np.zeros((4, 8))], "motion": [np.zeros((5, 3))]}), config
        )
    with pytest.raises(ValueError, match="missing motion"):
        prepare_motion_dataset(Dataset.from_dict({"cond_features": [np.zeros((4, 8))]}), config)
