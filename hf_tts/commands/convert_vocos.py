"""`hf-tts convert vocos SRC_DIR --out DIR`: an upstream Vocos folder -> a `VocosModel` folder."""

from __future__ import annotations

import argparse

from hf_tts.commands.convert import add_dtype_option


def register(families: argparse._SubParsersAction) -> None:
    parser = families.add_parser(
        "vocos",
        help="convert an upstream Vocos folder (config.yaml + pytorch_model.bin, e.g. charactr/vocos-mel-24khz)",
        description="Convert an upstream Vocos vocoder folder (config.yaml + pytorch_model.bin) into a "
        "transformers folder (config.json + model.safetensors) loadable with AutoModel after `import hf_tts`.",
    )
    parser.add_argument("src_dir", metavar="SRC_DIR", help="folder with upstream config.yaml and pytorch_model.bin")
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
    from hf_tts.convert.vocos import convert_vocos_checkpoint

    model = convert_vocos_checkpoint(
        args.src_dir, args.out, overwrite=args.overwrite, allow_large=args.allow_large, dtype=args.dtype
    )
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out} (Vocos, {params:,} parameters in {args.dtype}, {model.config.sampling_rate} Hz)")
    return 0
