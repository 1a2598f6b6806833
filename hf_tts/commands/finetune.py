"""`hf-tts finetune --model DIR_OR_REPO --data PATH --out DIR`: fine-tuning with Trainer (see hf_tts.training)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune an F5/E2 or motion model with transformers.Trainer (EMA, frame-bucketed batches)",
        description=(
            "Fine-tune a package model. F5/E2 data: a folder with upstream's metadata.csv ('audio_file|text' lines, "
            "paths relative to the folder) or a datasets save_to_disk folder with audio and text columns. Motion "
            "data: a save_to_disk folder with cond_features, motion and optional mask columns. The output holds the "
            "EMA weights (loaded by default), the trained weights as the 'online' variant, and a model card."
        ),
    )
    parser.add_argument("--model", required=True, help="package model folder or Hub repo id")
    parser.add_argument("--data", required=True, help="training data folder")
    parser.add_argument("--out", required=True, help="output folder (written atomically)")
    parser.add_argument("--max-steps", type=int, default=1000, help="optimizer steps (default: 1000)")
    parser.add_argument("--lr", type=float, default=1e-5, help="peak learning rate (default: 1e-5, upstream's)")
    parser.add_argument(
        "--batch-frames",
        type=int,
        help="frames per batch (default: 3200 for F5/E2 as upstream; motion: --batch-size rows; 0: --batch-size rows)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="rows per batch when batches are not frame-based")
    parser.add_argument("--max-samples", type=int, default=64, help="most clips in a frame-based batch (0: no limit)")
    parser.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    parser.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate warm-up steps")
    parser.add_argument("--ema-decay", type=float, default=0.9999, help="EMA decay limit (upstream: 0.9999)")
    parser.add_argument("--ema-update-after-step", type=int, default=100, help="EMA copies the weights until then")
    parser.add_argument("--ema-update-every", type=int, default=10, help="EMA averages every N optimizer steps")
    parser.add_argument("--precompute-mel", action="store_true", help="compute the mels once (datasets.map)")
    parser.add_argument("--cache-dir", help="where the prepared dataset is cached (reused by later runs)")
    parser.add_argument("--extend-vocab", action="store_true", help="add the data's unknown tokens to the vocab")
    parser.add_argument(
        "--allow-unknown-tokens", action="store_true", help="map tokens missing from the vocab to id 0 (as upstream)"
    )
    parser.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto", help="auto: bf16 on GPUs")
    parser.add_argument("--logging-steps", type=int, default=10, help="log the loss every N steps")
    parser.add_argument("--save-steps", type=int, default=0, help="write a resumable checkpoint every N steps")
    parser.add_argument("--checkpoint-dir", help="checkpoint folder (default: OUT.checkpoints)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --checkpoint-dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the result (folder and card, one commit)")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument("--token", help="Hub token (default: the logged-in one)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hf_tts.training.finetune import finetune

    checkpoint_dir = args.checkpoint_dir or f"{args.out.rstrip('/')}.checkpoints"
    result = finetune(
        args.model,
        args.data,
        args.out,
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
