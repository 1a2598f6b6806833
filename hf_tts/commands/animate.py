"""`hf-tts animate MODEL AUDIO --out motion.npy [--plot curves.png]`: voice -> motion with a CFG motion model."""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from hf_tts.errors import InputError


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


def _write_atomically(target: Path, overwrite: bool, write: Callable[[Path], None]) -> None:
    if target.exists() and not overwrite:
        raise InputError(f"{target} already exists; choose another path or pass --overwrite")
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix, dir=target.parent)
    os.close(handle)
    try:
        write(Path(staging))
        os.replace(staging, target)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def plot_motion(motion, fps: int, path: Path, num_curves: int = 8) -> None:
    """Plot the first `num_curves` feature curves of (frames, nfeats) motion against time in seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

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


def _run(args: argparse.Namespace) -> int:
    import numpy as np
    from transformers import pipeline

    if (args.audio is None) == (args.features is None):
        raise InputError("give exactly one of AUDIO or --features FILE.npy")
    if args.features is not None and args.num_frames is None:
        raise InputError("--features needs --num-frames (the motion length cannot be inferred from features)")
    out, plot = Path(args.out), Path(args.plot) if args.plot else None
    for target in (out, plot):
        if target is not None and target.exists() and not args.overwrite:
            raise InputError(f"{target} already exists; choose another path or pass --overwrite")
    if args.features is not None:
        features_path = Path(args.features)
        if not features_path.is_file():
            raise InputError(f"features file {features_path} does not exist")
        inputs = {"cond_features": np.load(features_path, allow_pickle=False)}
    else:
        inputs = args.audio

    pipe = pipeline("audio-to-motion", model=args.model, device="cpu")
    result = pipe(
        inputs,
        guidance_scale=args.guidance_scale,
        num_inference_steps=args.steps,
        num_frames=args.num_frames,
        seed=args.seed,
    )
    motion, fps = result["motion"], result["fps"]
    # np.save appends ".npy" to names without it; the staging name keeps the suffix so it is written as given.
    _write_atomically(out, args.overwrite, lambda path: np.save(path, motion))
    if plot is not None:
        _write_atomically(plot, args.overwrite, lambda path: plot_motion(motion, fps, path, args.plot_features))
    print(f"wrote {out} ({motion.shape[0]} frames x {motion.shape[1]} features at {fps} fps)")
    if plot is not None:
        print(f"wrote {plot}")
    return 0
