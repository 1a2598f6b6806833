"""`hf-tts synthesize MODEL --text TEXT | --text-file FILE --ref-audio WAV --ref-text TEXT --out OUT.wav`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import BinaryIO

from hf_tts.commands._options import bounded_float, bounded_int
from hf_tts.errors import InputError
from hf_tts.file_utils import atomic_write_file, check_output_target
from hf_tts.limits import (
    MAX_CFG_STRENGTH,
    MAX_CHUNK_SECONDS,
    MAX_SAMPLING_STEPS,
    MAX_SEED,
    MAX_SPEED,
    MAX_SWAY,
    MIN_SPEED,
    MIN_SWAY,
)

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
    parser.add_argument(
        "--nfe-step",
        type=bounded_int(1, MAX_SAMPLING_STEPS),
        default=32,
        help=f"ODE steps, 1 to {MAX_SAMPLING_STEPS} (default 32)",
    )
    parser.add_argument(
        "--cfg-strength",
        type=bounded_float(0.0, MAX_CFG_STRENGTH),
        default=2.0,
        help=f"classifier-free guidance, 0 to {MAX_CFG_STRENGTH:g} (default 2.0)",
    )
    parser.add_argument(
        "--sway",
        type=bounded_float(MIN_SWAY, MAX_SWAY),
        default=-1.0,
        help=f"sway sampling coefficient, {MIN_SWAY:g} to {MAX_SWAY:.4f} (default -1.0)",
    )
    parser.add_argument(
        "--speed",
        type=bounded_float(MIN_SPEED, MAX_SPEED),
        default=1.0,
        help=f"speaking speed, {MIN_SPEED:g} to {MAX_SPEED:g} (default 1.0)",
    )
    parser.add_argument(
        "--seed", type=bounded_int(0, MAX_SEED), default=None, help="random seed (0 to 2**64-1) for reproducible output"
    )
    parser.add_argument(
        "--fix-duration",
        type=bounded_float(0.0, MAX_CHUNK_SECONDS, low_inclusive=False),
        default=None,
        metavar="SECONDS",
        help="fixed length of each chunk in seconds, reference included, at most "
        f"{MAX_CHUNK_SECONDS:g} (default: estimated from the text)",
    )
    parser.add_argument(
        "--remove-silence", action="store_true", help="shorten silences longer than 1 s in the output (as upstream)"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="model dtype (default float32)")
    parser.add_argument("--plot", metavar="PNG", help="also write the generated mel spectrogram as a PNG")
    parser.add_argument("--overwrite", action="store_true", help="replace existing --out / --plot files")
    parser.set_defaults(func=_run)


def _read_text(args: argparse.Namespace) -> str:
    from hf_tts.audio import check_input_file
    from hf_tts.tokenization_f5 import check_text

    if args.text is not None:
        return check_text(args.text, "--text")
    path = check_input_file(args.text_file, "text file")
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise InputError(f"text file {path} cannot be read: {error.strerror or error}") from error
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"text file {path} is not UTF-8 text (byte {error.start})") from error


def _local_path(source: str) -> str | None:
    """The model argument when it names a local folder (an input the outputs must not touch), else None."""
    return source if Path(source).exists() else None


def _check_outputs(args: argparse.Namespace) -> tuple[Path, Path | None, list[str | None]]:
    """Validate --out and --plot before any work: suffixes, and placements that would destroy something (an
    input, a fifo / device / symlink, an existing file without --overwrite)."""
    out, plot = Path(args.out), Path(args.plot) if args.plot else None
    if out.suffix.lower() != ".wav":
        raise InputError(f"--out must be a .wav file, got {out}")
    if plot is not None and plot.suffix.lower() != ".png":
        raise InputError(f"--plot must be a .png file, got {plot}")
    inputs = [_local_path(args.model), args.ref_audio, args.text_file]
    out = check_output_target(out, inputs=inputs, overwrite=args.overwrite, kind="file")
    if plot is not None:
        plot = check_output_target(plot, inputs=inputs, overwrite=args.overwrite, kind="file")
        if plot == out:
            raise InputError(f"--plot and --out are the same file ({out}); give two paths")
    return out, plot, inputs


def _run(args: argparse.Namespace) -> int:
    import soundfile
    import torch

    from hf_tts.audio import check_audio_file
    from hf_tts.limits import MAX_REFERENCE_AUDIO_SECONDS
    from hf_tts.processing import check_speech_text, normalize_reference_text
    from hf_tts.synthesis import load_speech_model, plot_mel, resolve_device

    # cheap checks first, so bad input is reported before the model loads and before anything is written
    out, plot, inputs = _check_outputs(args)
    device = resolve_device(args.device, "--device")
    text = check_speech_text(_read_text(args))
    normalize_reference_text(args.ref_text)
    check_audio_file(args.ref_audio, "reference audio", max_seconds=MAX_REFERENCE_AUDIO_SECONDS)
    model = load_speech_model(args.model, device=device, dtype=getattr(torch, args.dtype))
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

    def write_wav(stream: BinaryIO) -> None:
        soundfile.write(stream, audio, rate, subtype="PCM_16", format="WAV")

    atomic_write_file(out, write_wav, overwrite=args.overwrite, inputs=inputs)
    if plot is not None:
        atomic_write_file(plot, lambda stream: plot_mel(speech.mel, stream), overwrite=args.overwrite, inputs=inputs)
    chunks = len(speech.chunks)
    print(f"wrote {out} ({len(audio) / rate:.2f} s at {rate} Hz, {chunks} chunk{'s' if chunks > 1 else ''})")
    return 0
