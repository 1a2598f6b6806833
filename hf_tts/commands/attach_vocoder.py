"""`hf-tts attach-vocoder MODEL_DIR VOCODER_DIR`: make an F5-TTS / E2-TTS folder carry its Vocos vocoder."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "attach-vocoder",
        help="save a Vocos vocoder inside an F5-TTS / E2-TTS folder so the folder alone gives speech",
        description="Attach a Vocos vocoder (upstream charactr/vocos-mel-24khz folder, `hf-tts convert vocos` output "
        "or repo id) to an F5-TTS / E2-TTS model folder. The folder is rewritten atomically (or written to --out).",
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="F5-TTS / E2-TTS folder (from `hf-tts convert f5`)")
    parser.add_argument("vocoder", metavar="VOCODER_DIR", help="Vocos folder (upstream or converted) or repo id")
    parser.add_argument("--out", metavar="DIR", help="write a new folder instead of updating MODEL_DIR in place")
    parser.set_defaults(func=_run)


def _check_folder_kinds(model_dir: str, vocoder: str) -> None:
    """Refuse, from config.json alone and before any weights load, a MODEL_DIR that is a model of another kind than
    F5-TTS / E2-TTS and a local VOCODER_DIR that is not a Vocos vocoder (an F5 folder there would give a random
    vocoder). Folders without config.json are left to attach_vocoder_to_folder, which checks the output first."""
    from hf_tts.commands.inspect import FAMILIES, read_config_json
    from hf_tts.errors import InputError

    model_config = Path(model_dir) / "config.json"
    model_type = read_config_json(model_config).get("model_type") if model_config.is_file() else None
    if model_type is not None and model_type not in ("hf_tts_f5", "hf_tts_e2"):
        family = FAMILIES.get(model_type, f"model_type {model_type!r}")
        raise InputError(f"MODEL_DIR {model_dir} is a {family} folder; only F5-TTS / E2-TTS folders carry a vocoder")
    vocoder_config = Path(vocoder) / "config.json"
    if vocoder_config.is_file():
        vocoder_type = read_config_json(vocoder_config).get("model_type")
        if vocoder_type != "hf_tts_vocos":
            family = FAMILIES.get(vocoder_type, f"model_type {vocoder_type!r}")
            raise InputError(
                f"VOCODER_DIR {vocoder} is a {family} folder, not a Vocos vocoder (hf-tts convert vocos, or the "
                "upstream charactr/vocos-mel-24khz folder)"
            )


def _run(args: argparse.Namespace) -> int:
    from hf_tts.synthesis import attach_vocoder_to_folder

    _check_folder_kinds(args.model_dir, args.vocoder)
    written = attach_vocoder_to_folder(args.model_dir, args.vocoder, out_dir=args.out)
    print(f"wrote {written} (vocoder from {args.vocoder} attached)")
    return 0
