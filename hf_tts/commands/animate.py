"""`hf-tts animate MODEL AUDIO --out motion.npy [--plot curves.png]`: voice -> motion with a CFG motion model."""

from __future__ import annotations

import argparse
import contextlib
import os
import tokenize
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from hf_tts.commands._options import bounded_float, bounded_int
from hf_tts.commands.synthesize import DTYPES
from hf_tts.errors import InputError
from hf_tts.file_utils import atomic_write_file, check_output_target
from hf_tts.limits import MAX_GUIDANCE_SCALE, MAX_MOTION_FRAMES, MAX_SAMPLING_STEPS, MAX_SEED

if TYPE_CHECKING:  # numpy loads when the command runs, so `hf-tts animate --help` stays instant
    import numpy as np

    from hf_tts.models.cfg_motion import CFGMotionConfig, CFGMotionModel


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "animate",
        help="generate face/body motion from audio with a CFG motion model",
        description="Generate motion (frames x features, float32 .npy) from an audio file with a CFG motion model "
        "folder that has an audio encoder, or from precomputed conditioning features (--features FILE.npy of shape "
        "(length, C) with --num-frames). Optionally plot the motion curves to a PNG.",
    )
    parser.add_argument("model", metavar="MODEL", help="model folder or Hub repo id (a CFGMotionModel)")
    parser.add_argument("audio", metavar="AUDIO", nargs="?", help="audio file (WAV, FLAC, OGG)")
    parser.add_argument("--features", metavar="FILE", help="precomputed conditioning features (.npy, length x C)")
    parser.add_argument(
        "--num-frames",
        type=bounded_int(1, MAX_MOTION_FRAMES),
        help=f"motion frames to generate, at most {MAX_MOTION_FRAMES} (default: the audio's duration)",
    )
    parser.add_argument("--out", required=True, metavar="FILE", help="output .npy file of motion (frames, nfeats)")
    parser.add_argument("--plot", metavar="PNG", help="also write a PNG plot of the motion curves")
    parser.add_argument(
        "--plot-features", type=bounded_int(1, None), default=8, help="how many feature curves to plot (default 8)"
    )
    parser.add_argument(
        "--guidance-scale",
        type=bounded_float(0.0, MAX_GUIDANCE_SCALE),
        help=f"classifier-free guidance scale, 0 to {MAX_GUIDANCE_SCALE:g} (default: the model's)",
    )
    parser.add_argument(
        "--steps",
        type=bounded_int(1, MAX_SAMPLING_STEPS),
        help=f"DDIM steps, 1 to {MAX_SAMPLING_STEPS} (default: the model's num_inference_steps)",
    )
    parser.add_argument("--seed", type=bounded_int(0, MAX_SEED), help="random seed (0 to 2**64-1) for the noise")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu), e.g. cuda, cuda:1, mps")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="model dtype (default float32)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.set_defaults(func=_run)


def plot_motion(motion, fps: int, path: Path | BinaryIO, num_curves: int = 8) -> None:
    """Plot the first `num_curves` feature curves of (frames, nfeats) motion against time in seconds."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seconds = np.arange(motion.shape[0]) / fps
    figure, axes = plt.subplots(figsize=(10, 4))
    for index in range(min(num_curves, motion.shape[1])):
        axes.plot(seconds, motion[:, index], linewidth=1, label=f"feature {index}")
    axes.set_xlabel("time (s)")
    axes.set_ylabel("value")
    axes.set_title(f"motion: {motion.shape[0]} frames x {motion.shape[1]} features at {fps} fps")
    axes.legend(loc="upper right", fontsize="small", ncol=2)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=100)
    plt.close(figure)


def _check_options(args: argparse.Namespace) -> tuple[Path, Path | None, list[str | None]]:
    """Cheap checks of the command line, before the model loads: where the outputs go (never onto or into an input,
    a fifo, device or symlink), which inputs are given, and that they are files that can be read within the caps.
    Returns the output paths and the inputs."""
    inputs = [args.model if Path(args.model).exists() else None, args.audio, args.features]
    out = check_output_target(args.out, inputs=inputs, overwrite=args.overwrite, kind="file")
    plot = None
    if args.plot is not None:
        plot = check_output_target(args.plot, inputs=inputs, overwrite=args.overwrite, kind="file")
        if plot == out:
            raise InputError(f"--plot and --out are the same file ({out}); give two paths")
    if (args.audio is None) == (args.features is None):
        raise InputError("give exactly one of AUDIO or --features FILE.npy")
    if args.features is not None and args.num_frames is None:
        raise InputError("--features needs --num-frames (the motion length cannot be inferred from features)")
    if args.audio is not None:
        from hf_tts.audio import check_audio_file

        check_audio_file(args.audio, "AUDIO")
    if args.features is not None:
        read_npy_header(args.features, "--features")
    return out, plot, inputs


def read_npy_header(path: str | Path, what: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of a 2-D numeric .npy file, read from its header and checked against the file's size before
    any data is loaded: a header claiming more (or less) data than the file holds, Python objects (which need
    unpickling), non-numeric dtypes, other ranks and empty arrays are refused with an InputError naming `what`."""
    import numpy as np

    from hf_tts.audio import check_input_file

    path = check_input_file(path, f"{what} file")
    described = f"{what} {path}"
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                raise InputError(f"{described} is a .npy file of version {version}, which is not read; save it again")
            data_offset = handle.tell()
            size = os.fstat(handle.fileno()).st_size
    except InputError:
        raise
    except OSError as error:
        raise InputError(f"{described} cannot be read: {error.strerror or error}") from error
    except (ValueError, SyntaxError, TypeError, EOFError, RecursionError, tokenize.TokenError) as error:
        # numpy parses the header text with `tokenize` and `ast.literal_eval`: damaged text fails in either
        raise InputError(f"{described} is not a readable .npy array ({str(error).splitlines()[0][:160]})") from None
    if dtype.hasobject:
        raise InputError(f"{described} holds Python objects (dtype {dtype}); they are never unpickled: save numbers")
    if dtype.kind not in "fiu" or dtype.fields is not None:
        raise InputError(f"{described} has dtype {dtype}; expected float or integer numbers")
    if len(shape) != 2 or 0 in shape:
        raise InputError(f"{described} must be a non-empty (length, C) array, got shape {shape}")
    expected = shape[0] * shape[1] * dtype.itemsize
    if size - data_offset != expected:
        raise InputError(
            f"{described} is damaged: its header says {shape} {dtype} ({expected} bytes of data) but the file holds "
            f"{size - data_offset} bytes after the header"
        )
    return shape, dtype


def _load_features(path: str, config: CFGMotionConfig) -> np.ndarray:
    """(length, C) conditioning features from a .npy file, checked against the model's expected width and for
    NaN/Inf (they would make all-NaN motion)."""
    import numpy as np

    from hf_tts.file_utils import check_finite

    shape, _ = read_npy_header(path, "--features")
    width = config.quantizer.ssl_dim if config.quantizer.enabled else config.cond_feature_dim
    if shape[1] != width:
        raise InputError(f"--features {path} must be (length, {width}) for this model, got shape {shape}")
    try:
        features = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise InputError(f"--features {path} is not a readable .npy array: {error}") from error
    check_finite(features, f"--features {path}")
    return features.astype(np.float32)


def _load_model(source: str) -> CFGMotionModel:
    import torch
    from transformers import AutoModel
    from transformers.utils import logging

    from hf_tts.model_source import check_model_source
    from hf_tts.models.cfg_motion import CFGMotionModel

    check_model_source(source, "model")
    # Keep stderr for the one-line error of the CLI contract: no weight-loading progress bar.
    bars_were_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        model = AutoModel.from_pretrained(source, dtype=torch.float32)
    except (OSError, ValueError) as error:
        raise InputError(f"could not load a model from {source}: {str(error).strip().splitlines()[0]}") from error
    finally:
        if bars_were_enabled:
            logging.enable_progress_bar()
    if not isinstance(model, CFGMotionModel):
        raise InputError(f"{source} holds a {type(model).__name__}, not a CFG motion model")
    return model.eval()


@contextlib.contextmanager
def _diffusion_progress(model: CFGMotionModel, steps: int) -> Iterator[None]:
    """A progress bar over the diffusion steps: one denoiser call is one DDIM step (both guidance halves run in one
    batch). Long inputs are sampled in several windows of `steps` steps each; the bar grows by a window when the
    next one starts. The bar appears with the first step, so an input refused before sampling prints no bar, and
    only on a terminal (tqdm's disable=None), so logs and captured stderr keep the one-line error contract. It is a
    `huggingface_hub.utils.tqdm`, so `--quiet` (huggingface_hub's progress-bar switch) silences it."""
    from huggingface_hub.utils import tqdm

    bars: list = []

    def advance(module: object, inputs: object, output: object) -> None:
        if not bars:
            bars.append(tqdm(total=steps, desc="denoising", unit="step", disable=None))
        bar = bars[0]
        if bar.n >= bar.total:
            bar.total += steps
            bar.set_description(f"denoising (window {bar.n // steps + 1})")
        bar.update(1)

    handle = model.denoiser.register_forward_hook(advance)
    try:
        yield
    finally:
        handle.remove()
        for bar in bars:
            bar.close()


def _run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from transformers import pipeline

    from hf_tts.synthesis import resolve_device

    out, plot, input_paths = _check_options(args)
    device = resolve_device(args.device, "--device")  # checked before the model loads
    model = _load_model(args.model).to(device=device, dtype=getattr(torch, args.dtype))
    if args.features is not None:
        pipeline_input = {"cond_features": _load_features(args.features, model.config)}
    elif model.audio_encoder is None:
        raise InputError(
            f"{args.model} has no audio encoder (config.audio_encoder), so it cannot take audio; pass precomputed "
            "conditioning with --features FILE.npy --num-frames N"
        )
    else:
        pipeline_input = args.audio

    pipe = pipeline("audio-to-motion", model=model, device=model.device)
    with _diffusion_progress(model, args.steps or model.config.num_inference_steps):
        result = pipe(
            pipeline_input,
            guidance_scale=args.guidance_scale,
            num_inference_steps=args.steps,
            num_frames=args.num_frames,
            seed=args.seed,
        )
    motion, fps = result["motion"], result["fps"]
    atomic_write_file(out, lambda stream: np.save(stream, motion), overwrite=args.overwrite, inputs=input_paths)
    if plot is not None:
        atomic_write_file(
            plot,
            lambda stream: plot_motion(motion, fps, stream, args.plot_features),
            overwrite=args.overwrite,
            inputs=input_paths,
        )
    print(f"wrote {out} ({motion.shape[0]} frames x {motion.shape[1]} features at {fps} fps)")
    if plot is not None:
        print(f"wrote {plot}")
    return 0
