"""`hf-tts animate MODEL AUDIO --out motion.npy [--plot curves.png]`: voice -> motion with a CFG motion model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from hf_tts.errors import InputError
from hf_tts.file_utils import atomic_write_file

if TYPE_CHECKING:
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
    parser.add_argument("--num-frames", type=int, help="motion frames to generate (default: the audio's duration)")
    parser.add_argument("--out", required=True, metavar="FILE", help="output .npy file of motion (frames, nfeats)")
    parser.add_argument("--plot", metavar="PNG", help="also write a PNG plot of the motion curves")
    parser.add_argument("--plot-features", type=int, default=8, help="how many feature curves to plot (default 8)")
    parser.add_argument("--guidance-scale", type=float, help="classifier-free guidance scale (default: the model's)")
    parser.add_argument("--steps", type=int, help="DDIM steps (default: the model's num_inference_steps)")
    parser.add_argument("--seed", type=int, help="random seed for the initial noise")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.set_defaults(func=_run)


def plot_motion(motion, fps: int, path: Path | BinaryIO, num_curves: int = 8) -> None:
    """Plot the first `num_curves` feature curves of (frames, nfeats) motion against time in seconds."""
    import matplotlib

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


def _check_options(args: argparse.Namespace) -> None:
    """Cheap checks of the command line, before the model loads."""
    if (args.audio is None) == (args.features is None):
        raise InputError("give exactly one of AUDIO or --features FILE.npy")
    if args.features is not None and args.num_frames is None:
        raise InputError("--features needs --num-frames (the motion length cannot be inferred from features)")
    if args.num_frames is not None and args.num_frames < 1:
        raise InputError(f"--num-frames must be >= 1, got {args.num_frames}")
    if args.steps is not None and args.steps < 1:
        raise InputError(f"--steps must be >= 1, got {args.steps}")
    if args.guidance_scale is not None and not args.guidance_scale >= 0:
        raise InputError(f"--guidance-scale must be >= 0, got {args.guidance_scale}")
    if args.plot_features < 1:
        raise InputError(f"--plot-features must be >= 1, got {args.plot_features}")
    for name, path in (("AUDIO", args.audio), ("--features", args.features)):
        if path is not None and not Path(path).is_file():
            raise InputError(f"{name} file {path} does not exist")
    for target in (args.out, args.plot):
        if target is not None and Path(target).exists() and not args.overwrite:
            raise InputError(f"{target} already exists; choose another path or pass --overwrite")


def _load_features(path: str, config: CFGMotionConfig) -> np.ndarray:
    """(length, C) conditioning features from a .npy file, checked against the model's expected width."""
    try:
        features = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise InputError(f"--features {path} is not a readable .npy array: {error}") from error
    width = config.quantizer.ssl_dim if config.quantizer.enabled else config.cond_feature_dim
    if features.ndim != 2 or features.shape[1] != width:
        raise InputError(f"--features {path} must be (length, {width}) for this model, got shape {features.shape}")
    return features.astype(np.float32)


def _load_model(source: str) -> CFGMotionModel:
    import torch
    from transformers import AutoModel
    from transformers.utils import logging

    from hf_tts.models.cfg_motion import CFGMotionModel

    if not Path(source).exists() and (source.startswith((".", "/", "~")) or source.count("/") > 1):
        raise InputError(f"model folder {source} does not exist")
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


def _run(args: argparse.Namespace) -> int:
    from transformers import pipeline

    _check_options(args)
    model = _load_model(args.model)
    if args.features is not None:
        inputs = {"cond_features": _load_features(args.features, model.config)}
    elif model.audio_encoder is None:
        raise InputError(
            f"{args.model} has no audio encoder (config.audio_encoder), so it cannot take audio; pass precomputed "
            "conditioning with --features FILE.npy --num-frames N"
        )
    else:
        inputs = args.audio

    pipe = pipeline("audio-to-motion", model=model, device="cpu")
    result = pipe(
        inputs,
        guidance_scale=args.guidance_scale,
        num_inference_steps=args.steps,
        num_frames=args.num_frames,
        seed=args.seed,
    )
    motion, fps = result["motion"], result["fps"]
    out, plot = Path(args.out), Path(args.plot) if args.plot else None
    atomic_write_file(out, lambda stream: np.save(stream, motion), overwrite=args.overwrite)
    if plot is not None:
        atomic_write_file(
            plot, lambda stream: plot_motion(motion, fps, stream, args.plot_features), overwrite=args.overwrite
        )
    print(f"wrote {out} ({motion.shape[0]} frames x {motion.shape[1]} features at {fps} fps)")
    if plot is not None:
        print(f"wrote {plot}")
    return 0
