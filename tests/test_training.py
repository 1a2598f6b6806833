"""Fine-tuning F5/E2 with transformers.Trainer on a synthetic dataset of chirps and tones (CPU, tiny models).

One 30-step run (module fixture) is the proof of learning and the reference for EMA, saving and resume:
- the loss falls by at least 30% (mean of the first 5 steps vs the last 5);
- the saved folder loads the EMA weights by default and the trained weights with variant="online";
- resuming from the step-20 checkpoint reproduces steps 21-30 (losses, weights and EMA) exactly;
- gradient checkpointing and gradient accumulation behave as Trainer users expect.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, Trainer, TrainingArguments

from hf_tts import E2TTSConfig, E2TTSModel, F5TTSModel
from hf_tts.training import (
    ONLINE_VARIANT,
    EMACallback,
    FlowMatchingDataCollator,
    HfTtsTrainer,
    mel_spectrogram_for,
    prepare_tts_dataset,
    save_trained_model,
)
from hf_tts.training.ema import EMA_WEIGHTS_NAME
from hf_tts.training.trainer import loss_history
from tests.training_utils import MEL, TINY, synthetic_dataset, tiny_f5_config, tiny_tokenizer

STEPS = 30
CHECKPOINT_STEP = 20
BATCH_FRAMES = 240


def make_trainer(output_dir, config, dataset, *, model_class=F5TTSModel, ema=None, max_steps=STEPS, **arguments):
    torch.manual_seed(0)
    model = model_class(config)
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=max_steps,
        learning_rate=2e-3,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="steps",
        save_steps=CHECKPOINT_STEP,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        **arguments,
    )
    return HfTtsTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=FlowMatchingDataCollator(mel_spectrogram_for(config)),
        callbacks=[ema] if ema is not None else None,
        batch_frames=BATCH_FRAMES,
    )


def make_ema() -> EMACallback:
    # Upstream's schedule shape with a short copy phase so that 30 steps average something.
    return EMACallback(max_decay=0.9999, update_after_step=5, update_every=1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("training")
    tokenizer = tiny_tokenizer(folder)
    config = tiny_f5_config()
    dataset = prepare_tts_dataset(synthetic_dataset(), tokenizer, config, precompute_mel=True)
    return folder, tokenizer, config, dataset


@pytest.fixture(scope="module")
def run(setup):
    folder, tokenizer, config, dataset = setup
    ema = make_ema()
    trainer = make_trainer(folder / "run", config, dataset, ema=ema)
    trainer.train()
    out = folder / "final"
    out.mkdir()
    save_trained_model(out, trainer.model, ema=ema, tokenizer=tokenizer)
    return trainer, ema, out


def test_thirty_cpu_steps_cut_the_loss_by_at_least_30_percent(run):
    trainer, _, _ = run
    losses = [loss for _, loss in loss_history(trainer)]
    assert len(losses) == STEPS
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last <= 0.7 * first, f"loss fell only from {first:.3f} to {last:.3f}"


def test_trainer_divides_the_mean_loss_by_accumulation_steps(setup):
    """The models' forward takes no **kwargs, so Trainer must not expect a token-normalised loss."""
    folder, _, config, dataset = setup
    trainer = make_trainer(folder / "ga", config, dataset, gradient_accumulation_steps=2)
    assert trainer.model_accepts_loss_kwargs is False
    plain = Trainer(model=trainer.model, args=trainer.args, data_collator=trainer.data_collator)
    assert plain.model_accepts_loss_kwargs is False
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.current_gradient_accumulation_steps = 2
    torch.manual_seed(3)
    step_loss = trainer.training_step(trainer.model, batch)
    torch.manual_seed(3)
    full_loss = trainer.model(**batch).loss.detach()
    torch.testing.assert_close(step_loss, full_loss / 2)


def test_saved_model_loads_ema_by_default_and_online_weights_on_request(run):
    trainer, ema, out = run
    assert (out / "model.safetensors").is_file() and (out / f"model.{ONLINE_VARIANT}.safetensors").is_file()
    default = AutoModel.from_pretrained(out, dtype=torch.float32)
    online = AutoModel.from_pretrained(out, dtype=torch.float32, variant=ONLINE_VARIANT)
    assert isinstance(default, F5TTSModel)
    trained = trainer.model.state_dict()
    differing = 0
    for name, value in default.state_dict().items():
        if name in ema.shadow:
            assert torch.equal(value, ema.shadow[name]), name
            differing += not torch.allclose(value, trained[name], atol=1e-6)
        assert torch.equal(online.state_dict()[name], trained[name]), name
    # The EMA lags the trained weights: most tensors differ.
    assert differing > len(ema.shadow) // 2
    # Non-persistent buffers come back right after loading (mel filterbank).
    torch.testing.assert_close(default.mel_spec.mel_filters, trainer.model.mel_spec.mel_filters)


def test_checkpoints_hold_the_ema(run):
    trainer, _, _ = run
    path = trainer.args.output_dir + f"/checkpoint-{CHECKPOINT_STEP}/{EMA_WEIGHTS_NAME}"
    stored = load_file(path)
    assert set(stored) == {name for name, value in trainer.model.state_dict().items() if value.is_floating_point()}


def test_resume_from_checkpoint_reproduces_the_uninterrupted_run(setup, run):
    folder, _, config, dataset = setup
    reference, reference_ema, _ = run
    ema = make_ema()
    resumed = make_trainer(folder / "resumed", config, dataset, ema=ema)
    resumed.train(resume_from_checkpoint=f"{reference.args.output_dir}/checkpoint-{CHECKPOINT_STEP}")
    assert ema.num_updates == reference_ema.num_updates == STEPS
    # The resumed log history starts with the checkpoint's entries; compare the steps trained after it.
    history, expected = loss_history(resumed), loss_history(reference)
    assert len(history) == len(expected) == STEPS
    assert history[CHECKPOINT_STEP:] == expected[CHECKPOINT_STEP:]
    reference_state = reference.model.state_dict()
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value, reference_state[name]), name
    for name, value in ema.shadow.items():
        assert torch.equal(value, reference_ema.shadow[name]), name


def test_gradient_checkpointing_trains_identically(setup, run):
    folder, _, config, dataset = setup
    reference, _, _ = run
    trainer = make_trainer(folder / "checkpointed", config, dataset, max_steps=3, activation_checkpointing=True)
    trainer.train()
    assert trainer.model.is_activation_checkpointing
    assert [loss for _, loss in loss_history(trainer)] == [loss for _, loss in loss_history(reference)][:3]


def test_e2_model_trains_with_the_same_pipeline(setup):
    folder, tokenizer, _, _ = setup
    config = E2TTSConfig(**{**TINY, **MEL, "depth": 2, "tokenizer_type": "char"})
    dataset = prepare_tts_dataset(synthetic_dataset(4), tokenizer, config)
    trainer = make_trainer(folder / "e2", config, dataset, model_class=E2TTSModel, max_steps=3)
    before = {name: value.clone() for name, value in trainer.model.state_dict().items()}
    trainer.train()
    losses = [loss for _, loss in loss_history(trainer)]
    assert len(losses) == 3 and all(np.isfinite(losses))
    changed = [name for name, value in trainer.model.state_dict().items() if not torch.equal(value, before[name])]
    assert any(name.startswith("backbone.text_embed") for name in changed)


def test_plain_trainer_with_fixed_batches_and_ema_resumes_from_its_output_dir(setup):
    """The EMA callback also works with the stock Trainer: on resume it reads the checkpoint Trainer resumes from."""
    folder, _, config, dataset = setup

    def plain_trainer(max_steps: int, ema: EMACallback) -> Trainer:
        torch.manual_seed(0)
        args = TrainingArguments(
            output_dir=str(folder / "plain"),
            max_steps=max_steps,
            per_device_train_batch_size=2,
            save_strategy="steps",
            save_steps=2,
            remove_unused_columns=False,
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
        )
        return Trainer(
            model=F5TTSModel(config),
            args=args,
            train_dataset=dataset,
            data_collator=FlowMatchingDataCollator(),
            callbacks=[ema],
        )

    first = make_ema()
    plain_trainer(2, first).train()
    resumed = make_ema()
    plain_trainer(3, resumed).train(resume_from_checkpoint=True)
    assert resumed.num_updates == 3  # 2 restored from checkpoint-2, then one more step
    stored = load_file(str(folder / "plain" / "checkpoint-2" / EMA_WEIGHTS_NAME))
    assert all(torch.equal(stored[name], first.shadow[name]) for name in stored)
