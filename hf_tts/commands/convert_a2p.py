"""`hf-tts convert a2p SRC_DIR --out DIR`: an audio2photoreal diffusion folder -> a `CFGMotionModel` folder."""

from __future__ import annotations

import argparse

from hf_tts.commands.convert import add_dtype_option


def register(families: argparse._SubParsersAction) -> None:
    parser = families.add_parser(
        "a2p",
        help="convert an audio2photoreal diffusion folder (args.json + model*.pt, face or body)",
        description="Convert an upstream audio2photoreal diffusion folder (checkpoints/diffusion/<name>/ with "
        "args.json and model<steps>.pt) into a transformers folder (config.json + model.safetensors + README.md) "
        "loadable with AutoModel after `import hf_tts`. The frozen fairseq audio/lip encoders are not ported: their "
        "keys are reported and dropped; the model takes precomputed conditioning features.",
    )
    parser.add_argument("src_dir", metavar="SRC_DIR", help="folder with upstream args.json and model*.pt")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (must not exist)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument(
        "--allow-large",
        action="store_true",
        help="build a model above the size limit (hf_tts.modeling_utils.MAX_MODEL_PARAMETERS, 1e9 parameters)",
    )
    add_dtype_option(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from hf_tts.convert.a2p import convert_a2p_checkpoint

    model, checkpoint = convert_a2p_checkpoint(
        args.src_dir, args.out, overwrite=args.overwrite, allow_large=args.allow_large, dtype=args.dtype
    )
    config = model.config
    params = sum(p.numel() for p in model.parameters())
    print(
        f"wrote {args.out} (CFG motion {config.architecture}, {config.layers} layers, {params:,} parameters in {args.dtype}) "
        f"from {checkpoint.source_file.name}"
    )
    print(f"folded {len(checkpoint.folded_rotary_keys)} duplicated rotary buffers into one")
    if checkpoint.dropped_keys:
        prefixes = sorted({key.split(".")[0] for key in checkpoint.dropped_keys})
        print(f"dropped {len(checkpoint.dropped_keys)} keys of modules not ported ({', '.join(prefixes)})")
    return 0
