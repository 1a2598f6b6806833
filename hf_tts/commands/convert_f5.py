"""`hf-tts convert f5 CKPT --arch PRESET|FILE --vocab VOCAB --out DIR`: upstream F5-TTS/E2-TTS -> transformers folder."""

from __future__ import annotations

import argparse

from hf_tts.commands.convert import add_dtype_option


def register(families: argparse._SubParsersAction) -> None:
    from hf_tts.presets import E2_PRESETS, F5_PRESETS  # plain dicts: --help stays free of transformers

    presets = ", ".join([*F5_PRESETS, *E2_PRESETS])
    parser = families.add_parser(
        "f5",
        help="convert an upstream F5-TTS / E2-TTS checkpoint (.safetensors or training .pt)",
        description="Convert an upstream F5-TTS or E2-TTS checkpoint (released EMA .safetensors, training .pt, or a "
        "pruned file) into a folder that AutoModel and AutoTokenizer load after `import hf_tts`. Every key and shape "
        "is checked against --arch first; nothing is written on a mismatch.",
    )
    parser.add_argument("checkpoint", metavar="CKPT", help="upstream checkpoint (.safetensors, .pt)")
    parser.add_argument(
        "--arch",
        required=True,
        metavar="PRESET|FILE",
        help=f"preset ({presets}) or upstream YAML config / JSON with backbone, arch, mel_spec keys. v0 and v1 "
        "weights are identical, so this choice is never guessed; it is recorded in config.architecture",
    )
    parser.add_argument("--vocab", required=True, metavar="VOCAB", help="upstream vocab.txt the model was trained with")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (must not exist)")
    parser.add_argument(
        "--use-online-weights",
        action="store_true",
        help="convert model_state_dict of a training .pt instead of the EMA weights (the default, as released)",
    )
    parser.add_argument(
        "--vocoder",
        metavar="DIR",
        help="Vocos vocoder to carry in the folder (upstream charactr/vocos-mel-24khz layout or `hf-tts convert "
        "vocos` output), so the folder alone gives speech",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument(
        "--allow-large",
        action="store_true",
        help="build a model above the size limit (hf_tts.modeling_utils.MAX_MODEL_PARAMETERS, 1e9 parameters)",
    )
    add_dtype_option(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from transformers import AutoConfig

    from hf_tts.convert.f5 import convert_f5_checkpoint

    out = convert_f5_checkpoint(
        args.checkpoint,
        args.arch,
        args.vocab,
        args.out,
        use_online_weights=args.use_online_weights,
        overwrite=args.overwrite,
        vocoder=args.vocoder,
        allow_large=args.allow_large,
        dtype=args.dtype,
    )
    config = AutoConfig.from_pretrained(out)
    weights = "online (model_state_dict)" if args.use_online_weights else "EMA"
    print(f"wrote {out} ({config.model_type}, architecture {config.architecture}, {weights} weights in {args.dtype})")
    return 0
