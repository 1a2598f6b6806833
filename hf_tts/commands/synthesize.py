"""`hf-tts synthesize MODEL --text TEXT | --text-file FILE --ref-audio WAV --ref-text TEXT --out OUT.wav`."""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_tts.errors import InputError
from hf_tts.file_utils import atomic_write_file

DTYPES = ("float32", "float16", "bfloat16")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synthesize",
        help="speak a text in the voice of a reference recording (F5-TTS / E2-TTS folder with a vocoder)",
        description="Zero-shot text to speech: the voice of --ref-audio (whose transcript is --ref-text) speaks "
        "--text. Long texts are split into chunks that are sampled in one batch and cross-faded.",
    )
    parser.add_argument("model", metavar="MODEL", help="model folder or Hub repo id (carrying its vocoder)")
    text = parser.add_mutually_exclusive_group(required=True)
    text.add_argument("--text", help="text to speak")
    text.add_argument("--text-file", metavar="FILE", help="UTF-8 file with the text to speak")
    parser.add_argument("--ref-audio", required=True, metavar="WAV", help="reference recording (0.5 to 12 s works)")
    parser.add_argument("--ref-text", required=True, help="transcript of the reference recording")
    parser.add_argument("--out", required=True, metavar="OUT.wav", help="output WAV file")
    parser.add_argument("--nfe-step", type=int, default=32, help="ODE steps (default 32)")
    parser.add_argument("--cfg-strength", type=float, default=2.0, help="classifier-free guidance (default 2.0)")
    parser.add_argument("--sway", type=float, default=-1.0, help="sway sampling coefficient (default -1.0)")
    parser.add_argument("--speed", type=float, default=1.0, help="speaking speed (default 1.0)")
    parser.add_argument("--seed", type=int, default=None, help="random seed for reproducible output")
    parser.add_argument(
        "--fix-duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="fixed length of each chunk in seconds, reference included (default: estimated from the text)",
    )
    parser.add_argument(
        "--remove-silence", action="store_true", help="shorten silences longer than 1 s in the output (as upstream)"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="model dtype (default float32)")
    parser.add_argument("--plot", metavar="PNG", help="also write the generated mel spectrogram as a PNG")
    parser.set_defaults(func=_run)


def _read_text(args: argparse.Namespace) -> str:
    if args.text is not None:
        return args.text
    path = Path(args.text_file)
    if not path.is_file():
        raise InputError(f"text file {path} does not exist")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"text file {path} is not UTF-8 text") from error


def _run(args: argparse.Namespace) -> int:
    import soundfile
    import torch

    from hf_tts.processing import normalize_reference_text
    from hf_tts.synthesis import load_speech_model, plot_mel

    out, plot = Path(args.out), Path(args.plot) if args.plot else None
    if out.suffix.lower() != ".wav":
        raise InputError(f"--out must be a .wav file, got {out}")
    if plot is not None and plot.suffix.lower() != ".png":
        raise InputError(f"--plot must be a .png file, got {plot}")
    if args.nfe_step < 1:
        raise InputError(f"--nfe-step must be >= 1, got {args.nfe_step}")
    text = _read_text(args)
    # cheap checks first, so bad input is reported before the model loads
    if not text.strip():
        raise InputError("the text to synthesize is empty; give at least one word")
    normalize_reference_text(args.ref_text)
    if not Path(args.ref_audio).is_file():
        raise InputError(f"reference audio file {args.ref_audio} does not exist")
    model = load_speech_model(args.model, device=args.device, dtype=getattr(torch, args.dtype))
    speech = model.synthesize(
        text,
        args.ref_audio,
        args.ref_text,
        nfe_step=args.nfe_step,
        cfg_strength=args.cfg_strength,
        sway_sampling_coef=args.sway,
        speed=args.speed,
        fix_duration=args.fix_duration,
        remove_silence=args.remove_silence,
        seed=args.seed,
        progress=True,
    )
    audio, rate = speech.audio, speech.sampling_rate
    atomic_write_file(out, lambda stream: soundfile.write(stream, audio, rate, subtype="PCM_16", format="WAV"))
    if plot is not None:
        atomic_write_file(plot, lambda stream: plot_mel(speech.mel, stream))
    chunks = len(speech.chunks)
    print(f"wrote {out} ({len(audio) / rate:.2f} s at {rate} Hz, {chunks} chunk{'s' if chunks > 1 else ''})")
    return 0
