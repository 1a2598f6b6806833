"""`finetune()`: the whole fine-tuning job behind `hf-tts finetune`.

Load a package model (folder or Hub repo id) and its tokenizer, read the data (upstream's `metadata.csv` folder or
a `datasets.save_to_disk` folder), check or extend the vocab, train with `HfTtsTrainer` + `EMACallback`, and write
the result atomically: EMA weights as the default weights, the trained ones as the `online` variant, the tokenizer,
`training_log.json` (every logged step) and a model card recording the data, the steps and the final loss.
Intermediate Trainer checkpoints (with the EMA) go to `checkpoint_dir` when `save_steps > 0`; `resume=True`
continues from the last one there.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hf_tts.commands.finetune import check_finetune_numbers
from hf_tts.errors import InputError
from hf_tts.file_utils import atomic_output_dir, check_finite, check_output_target
from hf_tts.hub.push import validate_push_target
from hf_tts.modeling_utils import allow_large_models

logger = logging.getLogger(__name__)

# Upstream finetune_cli defaults: 3200 frames (~34 s of audio) per batch, at most 64 clips, lr 1e-5.
DEFAULT_BATCH_FRAMES = 3200
DEFAULT_MAX_SAMPLES = 64
DEFAULT_LEARNING_RATE = 1e-5
TRAINING_LOG_NAME = "training_log.json"
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class FinetuneResult:
    """What a fine-tuning run produced."""

    out_dir: Path
    steps: int
    num_rows: int
    losses: list[tuple[int, float]] = field(default_factory=list)
    added_tokens: list[str] = field(default_factory=list)
    world_size: int = 1  # processes that trained (accelerate launch / torchrun); the folder is written once

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1][1] if self.losses else None

    def summary(self) -> str:
        first = f"{self.losses[0][1]:.4f}" if self.losses else "n/a"
        last = f"{self.final_loss:.4f}" if self.losses else "n/a"
        processes = f" on {self.world_size} processes" if self.world_size > 1 else ""
        return (
            f"trained {self.steps} steps on {self.num_rows} rows{processes}; loss {first} -> {last}; written to "
            f"{self.out_dir}"
        )


def _load_model_and_tokenizer(model_id: str, token: str | None) -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer

    import hf_tts  # noqa: F401  (registers the model types)
    from hf_tts.flow_matching import FlowMatchingTTSModel

    try:
        model = AutoModel.from_pretrained(model_id, dtype=torch.float32, token=token)
    except (OSError, ValueError) as error:
        raise InputError(f"cannot load the model {model_id!r}: {str(error).strip().splitlines()[0]}") from error
    tokenizer = None
    if isinstance(model, FlowMatchingTTSModel):
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_id, token=token)
        except (OSError, ValueError) as error:
            raise InputError(
                f"cannot load the tokenizer of {model_id!r} (a model folder needs its vocab.txt): "
                f"{str(error).strip().splitlines()[0]}"
            ) from error
    return model, tokenizer


def _check_data_source(data: str | os.PathLike, revision: str | None) -> str | None:
    """Tell a local `--data` folder from a Hub dataset repo id before anything is loaded: a file, or a path that
    looks local but does not exist, is refused at once. Returns the repo id, or None for a local folder."""
    from hf_tts.model_source import check_model_source
    from hf_tts.training.data import METADATA_FILE

    text = os.fspath(data)
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise InputError(f"--data {text} is not a folder (expected a {METADATA_FILE} folder or a saved dataset)")
    if path.is_dir():
        if revision is not None:
            raise InputError(f"--data-revision applies to a Hub dataset repo, not the local folder {text}")
        return None
    return check_model_source(text, "--data")


def _download_dataset(repo_id: str, revision: str | None, token: str | None) -> Path:
    """The files of a Hub dataset repo (HF_ENDPOINT, token and cache as huggingface_hub has them), at `revision`;
    the folder is named after the commit it holds."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    from hf_tts.model_source import hub_endpoint_label

    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", revision=revision, token=token))
    except RevisionNotFoundError:
        raise InputError(f"--data {repo_id} on {hub_endpoint_label()} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise InputError(
            f"--data {repo_id}: no such dataset repo on {hub_endpoint_label()} (or it is private: pass --token); a "
            f"local folder needs a path like ./{repo_id}"
        ) from None


def _load_rows(path: Path, label: str, *, confined: bool = False) -> Any:
    """A `datasets.Dataset` from a metadata.csv folder or a `save_to_disk` folder; `label` names it in messages
    (the path given, or the Hub repo id); `confined`: a downloaded repo, whose metadata may name only its files."""
    from datasets import Dataset, load_from_disk

    from hf_tts.training.data import METADATA_FILE, load_metadata_folder

    if (path / METADATA_FILE).is_file():
        return load_metadata_folder(path, confined=confined)
    if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
        dataset = load_from_disk(str(path))
        if not isinstance(dataset, Dataset):
            if "train" not in dataset:
                raise InputError(f"--data {label} is a DatasetDict without a 'train' split ({', '.join(dataset)})")
            dataset = dataset["train"]
        return dataset
    raise InputError(
        f"--data {label} has neither a {METADATA_FILE} (upstream's layout: 'audio_file|text' lines) nor a dataset "
        "saved with datasets' save_to_disk"
    )


def _is_local(model_id: str) -> bool:
    return Path(model_id).exists()


def _base_weight_sources(model_id: str, token: str | None) -> list[Any]:
    """Provenance of the starting weights for the card: the default (non-variant) weight files `from_pretrained`
    read, hashed; for a Hub repo, from the cached snapshot of the commit it loaded (named with its sha)."""
    folder = Path(model_id)
    revision = None
    if not _is_local(model_id):
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(model_id, allow_patterns=["model*.safetensors"], token=token))
        revision = folder.name
    weights = [
        path
        for path in sorted(folder.glob("model*.safetensors"))
        if path.name == "model.safetensors" or re.fullmatch(r"model-\d+-of-\d+\.safetensors", path.name)
    ]
    where = {"name": model_id if revision is None else f"{model_id}@{revision}"}
    return [where, *weights]


def finetune(
    model_id: str,
    data: str | os.PathLike | Any,
    out_dir: str | os.PathLike,
    *,
    data_revision: str | None = None,
    max_steps: int = 1000,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    batch_frames: int | None = None,
    batch_size: int = 8,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    gradient_accumulation_steps: int = 1,
    warmup_steps: int = 0,
    weight_decay: float = 0.0,
    max_grad_norm: float = 1.0,
    ema_decay: float = 0.9999,
    ema_update_after_step: int = 100,
    ema_update_every: int = 10,
    precompute_mel: bool = False,
    cache_dir: str | os.PathLike | None = None,
    extend_vocab: bool = False,
    allow_unknown_tokens: bool = False,
    gradient_checkpointing: bool = False,
    precision: str = "auto",
    logging_steps: int = 10,
    save_steps: int = 0,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    seed: int = 0,
    use_cpu: bool = False,
    progress: bool = True,
    overwrite: bool = False,
    allow_large: bool = False,
    push_to_hub: str | None = None,
    private: bool = False,
    token: str | None = None,
) -> FinetuneResult:
    """Fine-tune `model_id` (a package model folder or Hub repo id) on `data` and write the result to `out_dir`.

    F5/E2 models train on audio + text (`data`: a metadata.csv folder, a saved dataset, a Hub dataset repo id
    holding either layout (at `data_revision`), or a `datasets.Dataset` with `audio` and `text` columns); the motion model trains on `cond_features` / `motion` / optional `mask` rows
    and keeps its `freeze_quantizer` front end bit for bit. Batches hold `batch_frames` frames (upstream's
    frame-based batches; default 3200 for F5/E2 and `batch_size` rows for the motion model; 0: `batch_size` rows).
    The EMA follows upstream's schedule with `ema_decay` as its limit.

    Checked before anything is loaded: `push_to_hub` (repo id syntax, a token), every number (ranges in
    `hf_tts.commands.finetune.FINETUNE_LIMITS`) and `out_dir` (never an input, the current folder, or a folder that is
    not a model). A model above `MAX_MODEL_PARAMETERS` needs `allow_large=True`; trained weights that went NaN/Inf
    are refused instead of written.
    """
    from transformers import TrainingArguments

    from hf_tts.flow_matching import FlowMatchingTTSModel
    from hf_tts.training.data import (
        FlowMatchingDataCollator,
        find_unknown_tokens,
        mel_spectrogram_for,
        prepare_tts_dataset,
    )
    from hf_tts.training.ema import EMACallback
    from hf_tts.training.motion_data import MotionDataCollator, prepare_motion_dataset
    from hf_tts.training.trainer import HfTtsTrainer, bf16_available, loss_history, save_trained_model
    from hf_tts.training.vocab import extend_vocabulary

    # Everything that can be checked without loading anything comes first: the push target, the numbers, the
    # output placement; a long run must never end in a refusal that was knowable at the start.
    validate_push_target(push_to_hub, token)
    check_finetune_numbers(
        max_steps=max_steps,
        learning_rate=learning_rate,
        batch_frames=batch_frames,
        batch_size=batch_size,
        max_samples=max_samples,
        gradient_accumulation_steps=gradient_accumulation_steps,
        warmup_steps=warmup_steps,
        weight_decay=weight_decay,
        max_grad_norm=max_grad_norm,
        ema_decay=ema_decay,
        ema_update_after_step=ema_update_after_step,
        ema_update_every=ema_update_every,
        logging_steps=logging_steps,
        save_steps=save_steps,
        seed=seed,
    )
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16" and not bf16_available():
        raise InputError("--precision bf16 needs a CUDA GPU with bf16 support; use auto or fp32 here")
    data_is_path = isinstance(data, (str, os.PathLike))
    # A repo id names no existing path, so the output check passes over it (the download is added below).
    inputs = [model_id if _is_local(model_id) else None, data if data_is_path else None]
    inputs += [cache_dir, checkpoint_dir if resume else None]
    out_dir = check_output_target(out_dir, inputs=inputs, overwrite=overwrite, kind="dir")
    if checkpoint_dir is not None:
        _check_checkpoint_dir(Path(checkpoint_dir), out_dir)
    if resume and (checkpoint_dir is None or save_steps <= 0):
        raise InputError("resuming needs the checkpoint folder (--checkpoint-dir) and --save-steps > 0")
    if data_revision is not None and not data_is_path:
        raise InputError("data_revision applies to a Hub dataset repo id, not an in-memory dataset")
    data_repo = _check_data_source(data, data_revision) if data_is_path else None

    data_label = os.fspath(data) if data_is_path else None
    if data_repo is not None:
        data_folder = _download_dataset(data_repo, data_revision, token)
        inputs.append(data_folder)  # the output may not land in the download either
        data_label = f"{data_repo}@{data_folder.name}"  # the commit trained on
        dataset = _load_rows(data_folder, data_repo, confined=True)
    else:
        dataset = _load_rows(Path(data).expanduser(), os.fspath(data)) if data_is_path else data
    with allow_large_models(allow_large):
        model, tokenizer = _load_model_and_tokenizer(model_id, token)
    base_sources = _base_weight_sources(str(Path(model_id).absolute()) if _is_local(model_id) else model_id, token)
    added_tokens: list[str] = []
    if isinstance(model, FlowMatchingTTSModel):
        if extend_vocab:
            if "text" not in dataset.column_names:
                raise InputError(f"the data has no 'text' column (columns: {', '.join(dataset.column_names)})")
            tokenizer, added_tokens = extend_vocabulary(
                model, tokenizer, find_unknown_tokens(dataset["text"], tokenizer)
            )
        train_rows = prepare_tts_dataset(
            dataset,
            tokenizer,
            model.config,
            precompute_mel=precompute_mel,
            cache_dir=cache_dir,
            allow_unknown_tokens=allow_unknown_tokens,
        )
        collator = FlowMatchingDataCollator(None if precompute_mel else mel_spectrogram_for(model.config))
        batch_frames = DEFAULT_BATCH_FRAMES if batch_frames is None else batch_frames
    else:
        if extend_vocab:
            raise InputError(f"--extend-vocab applies to F5/E2 models, not {type(model).__name__}")
        train_rows = prepare_motion_dataset(dataset, model.config)
        collator = MotionDataCollator()

    use_bf16 = precision == "bf16" or (precision == "auto" and bf16_available() and not use_cpu)
    with tempfile.TemporaryDirectory(prefix="hf_tts-finetune-") as scratch:
        trainer_dir = Path(checkpoint_dir) if save_steps > 0 and checkpoint_dir else Path(scratch)
        args = TrainingArguments(
            output_dir=str(trainer_dir),
            max_steps=max_steps,
            learning_rate=learning_rate,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=gradient_accumulation_steps,
            warmup_steps=warmup_steps,
            weight_decay=weight_decay,
            max_grad_norm=max_grad_norm,
            logging_steps=max(1, min(logging_steps, max_steps)),
            save_strategy="steps" if save_steps > 0 else "no",
            save_steps=save_steps if save_steps > 0 else 500,
            activation_checkpointing=gradient_checkpointing,
            bf16=use_bf16,
            seed=seed,
            use_cpu=use_cpu,
            report_to=[],
            disable_tqdm=not progress,
            remove_unused_columns=False,
        )
        ema = EMACallback(max_decay=ema_decay, update_after_step=ema_update_after_step, update_every=ema_update_every)
        trainer = HfTtsTrainer(
            model=model,
            args=args,
            train_dataset=train_rows,
            data_collator=collator,
            callbacks=[ema],
            batch_frames=batch_frames or None,
            max_samples=max_samples,
        )
        trainer.train(resume_from_checkpoint=True if resume else None)
        losses = loss_history(trainer)

    result = FinetuneResult(
        out_dir=out_dir.absolute(),
        steps=trainer.state.global_step,
        num_rows=len(train_rows),
        losses=losses,
        added_tokens=added_tokens,
    )
    # A diverged run (NaN/Inf weights) is refused here rather than written as a model that only outputs noise.
    _check_trained_weights(trainer.model, ema)
    # Under `accelerate launch` / torchrun every rank trained its share of each batch with the same weights (DDP);
    # the folder, its card and the upload are written once, by the main process, while the others wait for it.
    if trainer.is_world_process_zero():
        with atomic_output_dir(out_dir, overwrite=overwrite, inputs=inputs) as staging:
            save_trained_model(staging, trainer.model, ema=ema, tokenizer=tokenizer)
            (staging / TRAINING_LOG_NAME).write_text(json.dumps(trainer.state.log_history, indent=2), encoding="utf-8")
            processor = _processor_for(trainer.model, tokenizer)
            if processor is not None:
                processor.save_pretrained(staging)
            _write_card(
                staging, out_dir.name, model_id, data_label, result, trainer, ema, batch_frames or None, base_sources
            )
        if push_to_hub:
            from hf_tts.hub.push import push_folder

            push_folder(out_dir, push_to_hub, private=private, token=token)
    trainer.accelerator.wait_for_everyone()
    result.world_size = trainer.args.world_size
    return result


def _processor_for(model: Any, tokenizer: Any) -> Any:
    """The F5/E2 processor to save beside the weights (so `pipeline(...)` and `synthesize` load the folder alone):
    the tokenizer with the model's audio settings; None for the motion model."""
    from hf_tts.flow_matching import FlowMatchingTTSModel
    from hf_tts.processing import F5FeatureExtractor, F5Processor

    if tokenizer is None or not isinstance(model, FlowMatchingTTSModel):
        return None
    config = model.config
    return F5Processor(F5FeatureExtractor(sampling_rate=config.sampling_rate, hop_length=config.hop_length), tokenizer)


def _base_model_name(model_id: str) -> str:
    """The card's `base_model`: the Hub repo id, or for a local folder the repo id it came from when its own card
    names one (front matter `model_id` / `base_model`), else the folder's name."""
    if not _is_local(model_id):
        return model_id
    folder = Path(model_id)
    card = folder / "README.md"
    if card.is_file():
        try:
            from huggingface_hub import ModelCard

            data = ModelCard.load(card).data.to_dict()
        except (OSError, ValueError):
            data = {}
        for key in ("model_id", "base_model"):
            value = data.get(key)
            if isinstance(value, str) and value and not value.startswith("."):
                return value
    return folder.absolute().name


def _check_checkpoint_dir(checkpoint_dir: Path, out_dir: Path) -> None:
    """The Trainer checkpoints live apart from the output: the output folder is replaced at the end, which would
    delete checkpoints inside it, and checkpoints around it would be swept into the model folder."""
    checkpoints, out = Path(os.path.realpath(checkpoint_dir)), Path(os.path.realpath(out_dir))
    if checkpoints == out or out in checkpoints.parents or checkpoints in out.parents:
        raise InputError(
            f"--checkpoint-dir {checkpoint_dir} and --out {out_dir} overlap; keep the checkpoints in a separate folder"
        )


def _check_trained_weights(model: torch.nn.Module, ema: Any) -> None:
    for name, tensor in model.state_dict().items():
        check_finite(tensor, f"the trained weight {name} (training diverged: lower --lr or check the data)")
    for name, tensor in (ema.shadow or {}).items():
        check_finite(tensor, f"the EMA weight {name} (training diverged: lower --lr or check the data)")


def _write_card(
    folder: Path,
    out_name: str,
    model_id: str,
    data_label: str | None,
    result: FinetuneResult,
    trainer,
    ema,
    batch_frames,
    base_sources: list[Any],
) -> None:
    from hf_tts.hub.cards import write_model_card
    from hf_tts.training.trainer import ONLINE_VARIANT

    args = trainer.args
    training = {
        "data": data_label or f"datasets.Dataset ({result.num_rows} rows)",
        "rows": result.num_rows,
        "steps": result.steps,
        "final_loss": round(result.final_loss, 6) if result.final_loss is not None else None,
        "first_loss": round(result.losses[0][1], 6) if result.losses else None,
        "learning_rate": args.learning_rate,
        "batch_frames": batch_frames if batch_frames is not None else f"{args.per_device_train_batch_size} rows",
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "ema": f"decay {ema.max_decay}, after {ema.update_after_step} steps, every {ema.update_every}",
        "online_weights": f'from_pretrained(..., variant="{ONLINE_VARIANT}")',
        "precision": "bf16" if args.bf16 else "fp32",
        "added_tokens": len(result.added_tokens),
    }
    write_model_card(
        folder,
        kind="finetune",
        config=trainer.model.config,
        base_model=_base_model_name(model_id),
        base_model_relation="finetune",
        sources=base_sources,
        model_id=f"./{out_name}",
        extra_context={"training": training},
    )


__all__ = ["DEFAULT_BATCH_FRAMES", "FinetuneResult", "PRECISIONS", "TRAINING_LOG_NAME", "finetune"]
