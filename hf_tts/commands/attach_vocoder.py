"""`hf-tts attach-vocoder MODEL_DIR VOCODER_DIR`: make an F5-TTS / E2-TTS folder carry its Vocos vocoder."""

from __future__ import annotations

import argparse


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


def _run(args: argparse.Namespace) -> int:
    from hf_tts.synthesis import attach_vocoder_to_folder

    written = attach_vocoder_to_folder(args.model_dir, args.vocoder, out_dir=args.out)
    print(f"wrote {written} (vocoder from {args.vocoder} attached)")
    return 0
