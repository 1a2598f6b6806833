"""`hf-tts finetune --model DIR_OR_REPO --data PATH --out DIR`: fine-tuning with Trainer (see hf_tts.training)."""

from __future__ import annotations

import argparse
import math

from hf_tts.commands._options import bounded_float, bounded_int

# Allowed range of every numeric option, shared by the parser and the Python API (`hf_tts.training.finetune`), which
# imports it from here so that `hf-tts --help` never pays for torch. Upper bounds are far above any real run; they
# keep a typo (`--batch-size 80000000`) from allocating the machine away.
MAX_TRAINING_STEPS = 10_000_000
FINETUNE_LIMITS: dict[str, tuple[float, float]] = {
    "max_steps": (1, MAX_TRAINING_STEPS),
    "learning_rate": (0.0, 1.0),  # > 0: checked open below
    "batch_frames": (0, 1_000_000),
    "batch_size": (1, 65_536),
    "max_samples": (0, 65_536),
    "gradient_accumulation_steps": (1, 65_536),
    "warmup_steps": (0, MAX_TRAINING_STEPS),
    "ema_decay": (0.0, 1.0),
    "ema_update_after_step": (0, MAX_TRAINING_STEPS),
    "ema_update_every": (1, MAX_TRAINING_STEPS),
    "logging_steps": (1, MAX_TRAINING_STEPS),
    "save_steps": (0, MAX_TRAINING_STEPS),
    "seed": (0, 2**32 - 1),  # numpy's seed range, which transformers' set_seed uses
    "weight_decay": (0.0, 1.0),
    "max_grad_norm": (0.0, 1e6),
}
# Options whose lower bound is excluded.
_OPEN_LOW = {"learning_rate"}


def check_finetune_numbers(**values: float | int | None) -> None:
    """Raise InputError for a value outside `FINETUNE_LIMITS` (NaN, inf, a bool or a float for an int option
    included); None passes (the option is unset)."""
    from hf_tts.errors import InputError

    for name, value in values.items():
        if value is None:
            continue
        low, high = FINETUNE_LIMITS[name]
        integral = isinstance(low, int)
        if isinstance(value, bool) or not isinstance(value, int if integral else (int, float)):
            raise InputError(f"{name} must be {'an integer' if integral else 'a number'}, got {value!r}")
        too_low = value <= low if name in _OPEN_LOW else value < low
        if not math.isfinite(value) or too_low or value > high:
            bracket = "(" if name in _OPEN_LOW else "["
            raise InputError(f"{name} must be a finite number in {bracket}{low}, {high}], got {value!r}")


def _int_option(name: str):
    low, high = FINETUNE_LIMITS[name]
    return bounded_int(int(low), int(high))


def _float_option(name: str):
    low, high = FINETUNE_LIMITS[name]
    return bounded_float(low, high, low_inclusive=name not in _OPEN_LOW)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune an F5/E2 or motion model with transformers.Trainer (EMA, frame-bucketed batches)",
        description=(
            "Fine-tune a package model. F5/E2 data: a folder with upstream's metadata.csv ('audio_file|text' lines, "
            "paths relative to the folder) or a datasets save_to_disk folder with audio and text columns. Motion "
            "data: a save_to_disk folder with cond_features, motion and optional mask columns. --data may also be a "
            "Hub dataset repo id (HF_ENDPOINT) holding either layout. The output holds the EMA weights (loaded by "
            "default), the trained weights as the 'online' variant, and a model card."
        ),
    )
    parser.add_argument("--model", required=True, help="package model folder or Hub repo id")
    parser.add_argument(
        "--data", required=True, help="training data: a folder, or a Hub dataset repo id holding the same layout"
    )
    parser.add_argument("--data-revision", help="branch, tag or commit of a Hub --data repo (default: main)")
    parser.add_argument("--out", required=True, help="output folder (written atomically)")
    parser.add_argument(
        "--max-steps", type=_int_option("max_steps"), default=1000, help="optimizer steps (default: 1000)"
    )
    parser.add_argument(
        "--lr", type=_float_option("learning_rate"), default=1e-5, help="peak learning rate (default: 1e-5, upstream's)"
    )
    parser.add_argument(
        "--batch-frames",
        type=_int_option("batch_frames"),
        help="frames per batch (default: 3200 for F5/E2 as upstream; motion: --batch-size rows; 0: --batch-size rows)",
    )
    parser.add_argument(
        "--batch-size",
        type=_int_option("batch_size"),
        default=8,
        help="rows per batch when batches are not frame-based",
    )
    parser.add_argument(
        "--max-samples",
        type=_int_option("max_samples"),
        default=64,
        help="most clips in a frame-based batch (0: no limit)",
    )
    parser.add_argument(
        "--grad-accum", type=_int_option("gradient_accumulation_steps"), default=1, help="gradient accumulation steps"
    )
    parser.add_argument(
        "--warmup-steps", type=_int_option("warmup_steps"), default=0, help="linear learning-rate warm-up steps"
    )
    parser.add_argument(
        "--ema-decay", type=_float_option("ema_decay"), default=0.9999, help="EMA decay limit (upstream: 0.9999)"
    )
    parser.add_argument(
        "--ema-update-after-step",
        type=_int_option("ema_update_after_step"),
        default=100,
        help="EMA copies the weights until then",
    )
    parser.add_argument(
        "--ema-update-every",
        type=_int_option("ema_update_every"),
        default=10,
        help="EMA averages every N optimizer steps",
    )
    parser.add_argument("--precompute-mel", action="store_true", help="compute the mels once (datasets.map)")
    parser.add_argument("--cache-dir", help="where the prepared dataset is cached (reused by later runs)")
    parser.add_argument("--extend-vocab", action="store_true", help="add the data's unknown tokens to the vocab")
    parser.add_argument(
        "--allow-unknown-tokens", action="store_true", help="map tokens missing from the vocab to id 0 (as upstream)"
    )
    parser.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto", help="auto: bf16 on GPUs")
    parser.add_argument(
        "--logging-steps", type=_int_option("logging_steps"), default=10, help="log the loss every N steps"
    )
    parser.add_argument(
        "--save-steps", type=_int_option("save_steps"), default=0, help="write a resumable checkpoint every N steps"
    )
    parser.add_argument("--checkpoint-dir", help="checkpoint folder (default: OUT.checkpoints)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --checkpoint-dir")
    parser.add_argument("--seed", type=_int_option("seed"), default=0)
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument(
        "--allow-large",
        action="store_true",
        help="load a model above the size limit (hf_tts.modeling_utils.MAX_MODEL_PARAMETERS, 1e9 parameters)",
    )
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the result (folder and card, one commit)")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument("--token", help="Hub token (default: the logged-in one)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hf_tts.training.finetune import finetune

    # An empty --out is refused by finetune() (check_output_target); it must not turn into "/.checkpoints" first.
    checkpoint_dir = args.checkpoint_dir or (f"{args.out.rstrip('/')}.checkpoints" if args.out.strip() else None)
    result = finetune(
        args.model,
        args.data,
        args.out,
        data_revision=args.data_revision,
        max_steps=args.max_steps,
        learning_rate=args.lr,
        batch_frames=args.batch_frames,
        batch_size=args.batch_size,
        max_samples=args.max_samples,
        gradient_accumulation_steps=args.grad_accum,
        warmup_steps=args.warmup_steps,
        ema_decay=args.ema_decay,
        ema_update_after_step=args.ema_update_after_step,
        ema_update_every=args.ema_update_every,
        precompute_mel=args.precompute_mel,
        cache_dir=args.cache_dir,
        extend_vocab=args.extend_vocab,
        allow_unknown_tokens=args.allow_unknown_tokens,
        gradient_checkpointing=args.gradient_checkpointing,
        precision=args.precision,
        logging_steps=args.logging_steps,
        save_steps=args.save_steps,
        checkpoint_dir=checkpoint_dir,
        resume=args.resume,
        seed=args.seed,
        use_cpu=args.cpu,
        overwrite=args.overwrite,
        allow_large=args.allow_large,
        push_to_hub=args.push_to_hub,
        private=args.private,
        token=args.token,
    )
    if result.added_tokens:
        print(f"vocab extended by {len(result.added_tokens)} tokens: {''.join(result.added_tokens)!r}")
    print(result.summary())
    if args.push_to_hub:
        print(f"pushed to {args.push_to_hub}")
    return 0
