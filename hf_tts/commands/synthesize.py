"""`hf-tts synthesize MODEL --text TEXT | --text-file FILE --ref-audio WAV --ref-text TEXT --out OUT.wav | -`, with
`--stream` (audio written as each chunk is ready), and batch jobs: `--batch JOBS.jsonl|csv --out-dir DIR`.

Batch jobs: one request per row (`text`, `ref_audio`, `ref_text`, optional `id` and per-row options, see
`ROW_OPTIONS`; --ref-audio / --ref-text and the option flags are the defaults of every row; `ref_audio` paths are
relative to the jobs file). Each row is written to `DIR/<id>.wav` (or `DIR/row<N>.wav`, N its 0-based position)
atomically; rows whose WAV exists are skipped (resume; --overwrite redoes them). A failing row (bad value, missing
reference, NaN output) is reported on stderr as `row N (ID): reason` and the others go on; the command exits 2 at
the end when any row failed, 0 otherwise. Under `accelerate launch` / `torchrun` (RANK and WORLD_SIZE set) rank r of
w does rows r, r+w, r+2w, ... (on `cuda`, GPU LOCAL_RANK), so every row is written once, without any
communication between the processes.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any, BinaryIO

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

DTYPES = ("auto", "float32", "float16", "bfloat16")
# Per-row options of a batch job (column / key -> type); `sway` is the CLI's name of sway_sampling_coef.
ROW_OPTIONS = {
    "speed": float,
    "fix_duration": float,
    "seed": int,
    "nfe_step": int,
    "cfg_strength": float,
    "sway": float,
    "remove_silence": bool,
}
ROW_KEYS = ("id", "text", "ref_audio", "ref_text", *ROW_OPTIONS)
MAX_JOB_ROWS = 1_000_000
MAX_JOBS_FILE_BYTES = 256 << 20
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synthesize",
        help="speak a text in the voice of a reference recording (F5-TTS / E2-TTS folder with a vocoder)",
        description="Zero-shot text to speech: the voice of --ref-audio (whose transcript is --ref-text) speaks "
        "--text. Long texts are split into chunks that are sampled in one batch and cross-faded.",
    )
    parser.add_argument("model", metavar="MODEL", help="model folder or Hub repo id (carrying its vocoder)")
    text = parser.add_mutually_exclusive_group()
    text.add_argument("--text", help="text to speak")
    text.add_argument("--text-file", metavar="FILE", help="UTF-8 file with the text to speak")
    text.add_argument(
        "--batch",
        metavar="JOBS",
        help="batch jobs: a .jsonl (one object per line) or .csv (with a header) file of rows with text, ref_audio, "
        "ref_text and optional id, speed, fix_duration, seed, nfe_step, cfg_strength, sway, remove_silence; needs "
        "--out-dir",
    )
    parser.add_argument(
        "--ref-audio", metavar="WAV", help="reference recording (0.5 to 12 s works); with --batch, the rows' default"
    )
    parser.add_argument("--ref-text", help="transcript of the reference recording; with --batch, the rows' default")
    parser.add_argument(
        "--out", metavar="OUT.wav", help="output WAV file; with --stream, '-' writes raw 16-bit PCM to stdout"
    )
    parser.add_argument("--out-dir", metavar="DIR", help="with --batch: the folder of the rows' WAV files")
    parser.add_argument(
        "--batch-size",
        type=bounded_int(1, 4096),
        default=4,
        help="with --batch: rows prepared together, whose chunks share solves (default 4)",
    )
    parser.add_argument(
        "--stream",
        action="store_true",
        help="write the audio as each chunk is ready (the first chunk is sampled alone): into the staging file "
        "that becomes --out at the end, or as raw 16-bit little-endian mono PCM to stdout with --out -",
    )
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
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="sampling precision; auto (default): bfloat16 on CPUs with AVX512-BF16/AMX and on GPUs with bf16, else "
        "float32; float32 gives upstream's numbers exactly",
    )
    parser.add_argument("--plot", metavar="PNG", help="also write the generated mel spectrogram as a PNG")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace existing --out / --plot files (with --batch: redo done rows)"
    )
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


def _check_outputs(args: argparse.Namespace) -> tuple[Path | None, Path | None, list[str | None]]:
    """Validate --out and --plot before any work: suffixes, and placements that would destroy something (an
    input, a fifo / device / symlink, an existing file without --overwrite). `--out -` (stdout) gives None."""
    inputs = [_local_path(args.model), args.ref_audio, args.text_file]
    if args.out == "-":
        if not args.stream:
            raise InputError("--out - (raw PCM to stdout) needs --stream; give a .wav path otherwise")
        return None, None, inputs
    out, plot = Path(args.out), Path(args.plot) if args.plot else None
    if out.suffix.lower() != ".wav":
        raise InputError(f"--out must be a .wav file (or - with --stream), got {out}")
    if plot is not None and plot.suffix.lower() != ".png":
        raise InputError(f"--plot must be a .png file, got {plot}")
    out = check_output_target(out, inputs=inputs, overwrite=args.overwrite, kind="file")
    if plot is not None:
        plot = check_output_target(plot, inputs=inputs, overwrite=args.overwrite, kind="file")
        if plot == out:
            raise InputError(f"--plot and --out are the same file ({out}); give two paths")
    return out, plot, inputs


def _check_mode(args: argparse.Namespace) -> None:
    """The options each mode needs, and those it cannot take, as one clear line."""
    if args.batch is not None:
        for name, value in (("--out", args.out), ("--stream", args.stream), ("--plot", args.plot)):
            if value:
                raise InputError(f"{name} does not apply to --batch (each row is written to --out-dir)")
        if not args.out_dir:
            raise InputError("--batch needs --out-dir, the folder the rows' WAV files go to")
        return
    if args.out_dir:
        raise InputError("--out-dir applies to --batch; give --out for one text")
    missing = [
        name
        for name, value in (
            ("--text or --text-file", args.text is not None or args.text_file is not None),
            ("--ref-audio", args.ref_audio),
            ("--ref-text", args.ref_text),
            ("--out", args.out),
        )
        if not value
    ]
    if missing:
        raise InputError(f"{missing[0]} is required (or give --batch JOBS with --out-dir)")
    if args.stream and (args.plot or args.remove_silence):
        raise InputError("--plot and --remove-silence need the whole audio, so they cannot be used with --stream")


def _load_model(args: argparse.Namespace, device: Any):
    import torch

    from hf_tts.synthesis import load_speech_model

    # fp32 load (the vocoder stays fp32), then the flow-matching part in the sampling precision: no second copy
    return load_speech_model(args.model, device=device, dtype=torch.float32, sampling_dtype=args.dtype)


def _run(args: argparse.Namespace) -> int:
    from hf_tts.audio import check_audio_file
    from hf_tts.limits import MAX_REFERENCE_AUDIO_SECONDS
    from hf_tts.processing import check_speech_text, normalize_reference_text
    from hf_tts.synthesis import plot_mel, resolve_device

    _check_mode(args)
    if args.batch is not None:
        return _run_batch(args)
    # cheap checks first, so bad input is reported before the model loads and before anything is written
    out, plot, inputs = _check_outputs(args)
    device = resolve_device(args.device, "--device")
    text = check_speech_text(_read_text(args))
    normalize_reference_text(args.ref_text)
    check_audio_file(args.ref_audio, "reference audio", max_seconds=MAX_REFERENCE_AUDIO_SECONDS)
    model = _load_model(args, device)
    options = dict(
        nfe_step=args.nfe_step,
        cfg_strength=args.cfg_strength,
        sway_sampling_coef=args.sway,
        speed=args.speed,
        fix_duration=args.fix_duration,
        seed=args.seed,
        dtype=model.sampling_dtype,
    )
    if args.stream:
        return _run_stream(model, text, args, out, inputs, options)
    speech = model.synthesize(
        text, args.ref_audio, args.ref_text, remove_silence=args.remove_silence, progress=True, **options
    )
    audio, rate = speech.audio, speech.sampling_rate
    _write_row(out, speech, args.overwrite, inputs)
    if plot is not None:
        config = model.config
        atomic_write_file(
            plot,
            lambda stream: plot_mel(
                speech.mel,
                stream,
                f"{Path(out).name}: generated mel spectrogram ({len(speech.chunks)} chunks)",
                hop_length=config.hop_length,
                sampling_rate=config.sampling_rate,
            ),
            overwrite=args.overwrite,
            inputs=inputs,
        )
    chunks = len(speech.chunks)
    print(f"wrote {out} ({len(audio) / rate:.2f} s at {rate} Hz, {chunks} chunk{'s' if chunks > 1 else ''})")
    return 0


def pcm16(audio: Any) -> bytes:
    """float audio in [-1, 1] as 16-bit little-endian PCM bytes (clipped), what --out - streams."""
    import numpy as np

    return np.clip(np.rint(np.asarray(audio, dtype=np.float32) * 32767.0), -32768, 32767).astype("<i2").tobytes()


def _run_stream(model, text: str, args: argparse.Namespace, out: Path | None, inputs: list, options: dict) -> int:
    """--stream: every piece is written as soon as it is ready; into the staging file (renamed to --out at the end,
    so a stopped run leaves no partial WAV) or to stdout as raw PCM."""
    import soundfile

    pieces = model.synthesize_stream(text, args.ref_audio, args.ref_text, **options)
    rate = model.vocoder.config.sampling_rate
    samples = 0
    if out is None:
        stdout = sys.stdout.buffer
        for piece in pieces:
            stdout.write(pcm16(piece.audio))
            stdout.flush()
            samples += len(piece.audio)
        print(f"streamed {samples / rate:.2f} s of 16-bit PCM at {rate} Hz, mono, to stdout", file=sys.stderr)
        return 0

    def write_progressively(stream: BinaryIO) -> None:
        nonlocal samples
        with soundfile.SoundFile(stream, "w", rate, 1, subtype="PCM_16", format="WAV") as wav:
            for piece in pieces:
                wav.write(piece.audio)
                wav.flush()
                samples += len(piece.audio)

    atomic_write_file(out, write_progressively, overwrite=args.overwrite, inputs=inputs)
    print(f"wrote {out} ({samples / rate:.2f} s at {rate} Hz, streamed)")
    return 0


# --------------------------------------------------------------------------------------------------- batch jobs


def distributed_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the environment `accelerate launch` and `torchrun` set; (0, 1, 0) alone."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise InputError(
            f"RANK / WORLD_SIZE / LOCAL_RANK must be whole numbers, got {os.environ.get('RANK')!r} / "
            f"{os.environ.get('WORLD_SIZE')!r} / {os.environ.get('LOCAL_RANK')!r}"
        ) from None
    if world < 1 or not 0 <= rank < world:
        raise InputError(f"RANK {rank} is not in [0, WORLD_SIZE {world}); check the launcher's environment")
    return rank, world, local


def read_jobs(path: str | os.PathLike) -> list[dict[str, Any] | InputError]:
    """The rows of a .jsonl / .csv jobs file, each a dict of its non-empty fields, or the InputError of a row that
    cannot be read (a bad JSON line); a file that cannot be read at all, or a CSV header with an unknown column,
    raises."""
    import csv
    import json

    from hf_tts.audio import check_input_file

    path = check_input_file(path, "--batch jobs file")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise InputError(f"--batch {path} must be a .jsonl or .csv file, got {suffix or 'no suffix'}")
    if path.stat().st_size > MAX_JOBS_FILE_BYTES:
        raise InputError(f"--batch {path} is larger than {MAX_JOBS_FILE_BYTES >> 20} MiB; split it")
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"--batch {path} is not UTF-8 text (byte {error.start})") from None
    except OSError as error:
        raise InputError(f"--batch {path} cannot be read: {error.strerror or error}") from None
    rows: list[dict[str, Any] | InputError] = []
    if suffix == ".csv":
        reader = csv.DictReader(content.splitlines())
        unknown = [name for name in reader.fieldnames or [] if name not in ROW_KEYS]
        if not reader.fieldnames or unknown:
            raise InputError(
                f"--batch {path}: the header must name columns among {', '.join(ROW_KEYS)}; got "
                f"{unknown[0] if unknown else 'no header'!r:.40}"
            )
        for record in reader:
            rows.append({key: value for key, value in record.items() if key is not None and value not in (None, "")})
    else:
        for number, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as error:
                rows.append(InputError(f"line {number} is not JSON ({error})"))
                continue
            if not isinstance(record, dict):
                rows.append(InputError(f"line {number} is not a JSON object"))
                continue
            rows.append(record)
    if len(rows) > MAX_JOB_ROWS:
        raise InputError(f"--batch {path} has {len(rows)} rows, more than {MAX_JOB_ROWS}; split it")
    if not rows:
        raise InputError(f"--batch {path} has no rows")
    return rows


def _row_value(key: str, value: Any) -> Any:
    """A row's option as its type (CSV gives strings), refused as an InputError naming the key."""
    kind = ROW_OPTIONS[key]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "0", "false", "no"):
            return value.strip().lower() in ("1", "true", "yes")
        raise InputError(f"{key} must be true or false, got {value!r:.40}")
    if isinstance(value, str):
        try:
            value = kind(value.strip())
        except ValueError:
            kind_name = "a whole number" if kind is int else "a number"
            raise InputError(f"{key} must be {kind_name}, got {value!r:.40}") from None
    return value


def _row_request(row: dict[str, Any], args: argparse.Namespace, base: Path) -> dict[str, Any]:
    """A jobs row (with the command line's defaults) as a `synthesize_batch` request; InputError names the key."""
    unknown = [key for key in row if key not in ROW_KEYS]
    if unknown:
        raise InputError(f"unknown key {unknown[0]!r:.40}; rows take {', '.join(ROW_KEYS)}")
    defaults = {
        "ref_audio": args.ref_audio,
        "ref_text": args.ref_text,
        "speed": args.speed,
        "fix_duration": args.fix_duration,
        "seed": args.seed,
        "nfe_step": args.nfe_step,
        "cfg_strength": args.cfg_strength,
        "sway": args.sway,
        "remove_silence": args.remove_silence,
    }
    merged = {**defaults, **{key: value for key, value in row.items() if key != "id"}}
    for key in ("text", "ref_audio", "ref_text"):
        if not isinstance(merged.get(key), str) or not merged[key]:
            raise InputError(f"{key} is missing or not a string (give it in the row or as --{key.replace('_', '-')})")
    ref_audio = Path(merged["ref_audio"])
    request = {
        "text": merged["text"],
        "ref_audio": str(
            ref_audio if ref_audio.is_absolute() or merged["ref_audio"] == args.ref_audio else base / ref_audio
        ),
        "ref_text": merged["ref_text"],
    }
    for key in ROW_OPTIONS:
        if merged.get(key) is not None:
            request["sway_sampling_coef" if key == "sway" else key] = _row_value(key, merged[key])
    return request


def _row_name(row: dict[str, Any] | InputError, index: int) -> str:
    """The row's output name: its `id` (a safe file name) or row<index>."""
    if isinstance(row, dict) and row.get("id") is not None:
        identifier = str(row["id"])
        if not _SAFE_ID.fullmatch(identifier):
            raise InputError(
                f"id {identifier!r:.40} is not a safe file name (letters, digits, '.', '_', '-'; 100 at most, "
                "not starting with '.')"
            )
        return identifier
    return f"row{index}"


def _check_out_dir(out_dir: Path, inputs: list) -> Path:
    """--out-dir may exist (resume) but must be a real folder that is no input, root, home or the current folder."""
    if not out_dir.exists() and not out_dir.is_symlink():
        return check_output_target(out_dir, inputs=inputs, kind="dir")
    if out_dir.is_symlink() or not out_dir.is_dir():
        raise InputError(f"--out-dir {out_dir} exists and is not a folder (or is a symbolic link); choose another")
    # the same placement rules as a new folder, on a child name (the folder itself may hold earlier rows)
    check_output_target(out_dir / ".hf_tts_batch", inputs=inputs, kind="file")
    real, cwd = Path(os.path.realpath(out_dir)), Path(os.path.realpath(os.getcwd()))
    if real == cwd or real in cwd.parents or real == Path(os.path.realpath(os.path.expanduser("~"))):
        raise InputError(f"refusing to write the rows into {out_dir}: it is the current or home folder (or above)")
    return Path(os.path.abspath(out_dir))


def _run_batch(args: argparse.Namespace) -> int:
    # huggingface_hub's tqdm, so --quiet silences it; disable=None shows it only on a terminal
    from huggingface_hub.utils import tqdm

    from hf_tts.synthesis import resolve_device

    rank, world, local_rank = distributed_rank()
    inputs = [_local_path(args.model), args.batch]
    out_dir = _check_out_dir(Path(args.out_dir), inputs)
    rows = read_jobs(args.batch)
    device = resolve_device(args.device, "--device")
    if device is not None and device.type == "cuda" and device.index is None and world > 1:
        device = resolve_device(f"cuda:{local_rank}", "--device (cuda:LOCAL_RANK)")
    base = Path(args.batch).parent
    failures: list[str] = []
    todo: list[tuple[int, str, str, dict[str, Any]]] = []
    names: dict[str, int] = {}
    skipped = 0
    for index, row in enumerate(rows):
        try:
            name = _row_name(row, index)
        except InputError as error:
            name = None
            failure = error
        else:
            failure = row if isinstance(row, InputError) else None
            if name in names:
                failure = InputError(f"id {name!r} is also row {names[name]}'s; ids must be unique")
            names.setdefault(name, index)
        if index % world != rank:  # another process's row (every process checks all, so all report the same)
            continue
        label = f"row {index}" + (f" ({name})" if name and not name.startswith("row") else "")
        if failure is None:
            if (out_dir / f"{name}.wav").exists() and not args.overwrite:
                skipped += 1
                continue
            try:
                todo.append((index, label, name, _row_request(row, args, base)))
            except InputError as error:
                failure = error
        if failure is not None:
            failures.append(f"{label}: {failure}")
    written = 0
    if todo:
        out_dir.mkdir(parents=True, exist_ok=True)
        model = _load_model(args, device)
        bar = tqdm(total=len(todo), desc=f"rank {rank}/{world}" if world > 1 else "rows", unit="row", disable=None)
        with bar:
            for start in range(0, len(todo), args.batch_size):
                group = todo[start : start + args.batch_size]
                results = model.synthesize_batch(
                    [request for *_, request in group],
                    batch_size=len(group),
                    dtype=model.sampling_dtype,
                    errors="return",
                )
                for (_, label, name, _), result in zip(group, results):
                    if isinstance(result, InputError):
                        failures.append(f"{label}: {result}")
                    else:
                        _write_row(out_dir / f"{name}.wav", result, args.overwrite, inputs)
                        written += 1
                    bar.update(1)
    for failure in failures:
        print(f"hf-tts synthesize: {failure}", file=sys.stderr)
    where = f"rank {rank} of {world}: " if world > 1 else ""
    print(f"{where}wrote {written} rows to {out_dir}, skipped {skipped} already written, {len(failures)} failed")
    return 2 if failures else 0


def _write_row(path: Path, speech: Any, overwrite: bool, inputs: list) -> None:
    import soundfile

    def write_wav(stream: BinaryIO) -> None:
        soundfile.write(stream, speech.audio, speech.sampling_rate, subtype="PCM_16", format="WAV")

    atomic_write_file(path, write_wav, overwrite=overwrite, inputs=inputs)
