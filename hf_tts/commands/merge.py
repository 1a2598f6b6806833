"""`hf-tts merge SRC SRC [...] --weights W W [...] --out DIR`: streaming checkpoint merge (see hf_tts.merge)."""

from __future__ import annotations

import argparse
import contextlib
import gc
from collections.abc import Iterator

from hf_tts.commands._options import bounded_float, bounded_int
from hf_tts.merge.specs import (
    LAYER_RULE_TIMEOUT_S,
    MAX_LAYER_PATTERN_CHARS,
    MAX_LAYER_PATTERN_REPEATS,
    METHODS,
    OUTPUT_DTYPE_NAMES,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "merge",
        help="average checkpoints of one model (streaming, validated, with a generated model card)",
        description=(
            "Merge package model folders, Hub repo ids, upstream F5/E2 checkpoints or XTTS-v2 checkpoints. Every "
            "source is validated from its headers before anything is written; tensors are merged one at a time. "
            "Integer and bool tensors (step counters, codebook sizes) and a carried vocoder are never averaged: they "
            "are copied when every source holds the same values and refused otherwise. A merged tensor that overflows "
            "the output dtype (NaN/Inf) stops the merge with nothing written. --out may not be, contain or lie "
            "inside any input."
        ),
    )
    parser.add_argument("sources", nargs="*", metavar="SRC", help="model folder, Hub repo id or checkpoint file")
    parser.add_argument(
        "--weights",
        nargs="+",
        type=bounded_float(None, None),
        metavar="W",
        help="one finite weight per source (default: equal)",
    )
    parser.add_argument("--out", help="output folder (written atomically)")
    parser.add_argument("--method", choices=METHODS, default="linear")
    parser.add_argument(
        "--base",
        metavar="SRC",
        help="base model (task-vector methods, model_stock, sce, nearswap; optional for nuslerp, multislerp, karcher)",
    )
    parser.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="divide by the sum of the weights (default: on for linear and ties, off for task_arithmetic)",
    )
    parser.add_argument(
        "--lambda",
        dest="scale",
        type=bounded_float(None, None),
        default=1.0,
        help="task vector scale (task_arithmetic, ties); a finite number",
    )
    parser.add_argument(
        "--density",
        type=bounded_float(0.0, 1.0, low_inclusive=False),
        default=1.0,
        help="ties, dare_*, breadcrumbs*, della*: fraction of each task vector kept, in (0, 1]",
    )
    parser.add_argument(
        "--rescale",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="rescale pruned task vectors to their L1 norm (default: on for dare_* and della*, off otherwise)",
    )
    parser.add_argument(
        "--gamma", type=bounded_float(0.0, 1.0), help="breadcrumbs: fraction of largest entries dropped (0.01)"
    )
    parser.add_argument(
        "--epsilon", type=bounded_float(0.0, 1.0), help="della: keep-probability spread around density (0.15)"
    )
    parser.add_argument("--t", type=bounded_float(None, None), help="nearswap: similarity threshold (required)")
    parser.add_argument(
        "--select-topk", type=bounded_float(0.0, 1.0), help="sce: fraction of highest-variance entries kept (1.0)"
    )
    parser.add_argument(
        "--filter-wise", action="store_true", default=None, help="model_stock: one factor per row, not per tensor"
    )
    parser.add_argument("--max-iter", type=bounded_int(1, 1000), help="karcher: iterations (10)")
    parser.add_argument("--tol", type=bounded_float(0.0, 1.0, low_inclusive=False), help="karcher: tolerance (1e-5)")
    parser.add_argument(
        "--eps", type=bounded_float(0.0, 1.0, low_inclusive=False), help="multislerp: stabilising epsilon (1e-8)"
    )
    parser.add_argument(
        "--nuslerp-flatten",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="nuslerp: one angle per tensor (default) or per row/column vector",
    )
    parser.add_argument(
        "--nuslerp-row-wise", action="store_true", default=None, help="nuslerp without flatten: column vectors"
    )
    parser.add_argument(
        "--seed",
        type=bounded_int(0, (1 << 63) - 1),
        help="dare_* / della*: random seed (default: drawn once and saved in merge_recipe.yaml)",
    )
    parser.add_argument(
        "--layer-weights",
        action="append",
        default=[],
        metavar="REGEX=W1,W2,...",
        help=(
            "per-source weights for tensors whose name matches REGEX (repeatable; the first match wins). REGEX is "
            f"Python regex syntax, searched with the `regex` module: a search over {LAYER_RULE_TIMEOUT_S} s on one "
            "tensor name (nested quantifiers such as (a+)+) is refused, as are patterns over "
            f"{MAX_LAYER_PATTERN_CHARS} characters or whose {{m,n}} repeats multiply past "
            f"{MAX_LAYER_PATTERN_REPEATS}"
        ),
    )
    parser.add_argument("--dtype", choices=sorted(OUTPUT_DTYPE_NAMES), help="output dtype (default: the inputs')")
    parser.add_argument(
        "--source", choices=("ema", "online"), default="ema", help="weights of upstream training checkpoints"
    )
    parser.add_argument("--arch", help="upstream F5/E2 sources: preset name or arch file")
    parser.add_argument("--vocab", help="upstream F5/E2 sources: vocab.txt")
    parser.add_argument(
        "--config-from", metavar="SRC", help="take config and tokenizer from SRC (default: the first source)"
    )
    parser.add_argument("--max-shard-size", default="5GB", help="largest output shard, e.g. 5GB or 500MB (bytes)")
    parser.add_argument(
        "--allow-config-mismatch",
        action="store_true",
        help="merge sources whose configs differ although their weights line up (e.g. F5 v0 and v1); risky",
    )
    parser.add_argument(
        "--recipe",
        metavar="FILE.yaml",
        help="YAML recipe defining the whole merge (see merge_recipe.yaml); its relative paths are read from its folder",
    )
    parser.add_argument("--dry-run", action="store_true", help="validate and print the plan; write nothing")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the result (folder and card, one commit)")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument("--token", help="Hub token (default: the logged-in one)")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow .pt/.pth files that need full unpickling (runs code from the file; only for trusted files)",
    )
    parser.set_defaults(func=run)


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector (reference counting still frees everything the merge makes). A merge
    makes no cycles worth collecting, but each time the collector's thresholds trip it traverses every object the
    imports created (torch, transformers: hundreds of thousands): 0.25 s of a 4 s merge."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def run(args: argparse.Namespace) -> int:
    from hf_tts.merge.allocator import use_streaming_malloc_settings

    use_streaming_malloc_settings()
    with _cyclic_gc_paused():
        return _merge(args)


def _merge(args: argparse.Namespace) -> int:
    from hf_tts.errors import InputError
    from hf_tts.merge import METHOD_PARAMETER_NAMES, merge

    if args.recipe and args.sources:
        raise InputError("give either --recipe or sources, not both (the recipe lists its sources)")
    if not args.recipe and len(args.sources) < 1:
        raise InputError("no sources: give at least two SRC arguments, or --recipe FILE.yaml")
    if not args.dry_run and args.out is None:
        raise InputError("--out DIR is required (or use --dry-run)")
    path, report = merge(
        args.sources or None,
        args.weights,
        args.method,
        args.out,
        base=args.base,
        normalize=args.normalize,
        layer_weights=args.layer_weights,
        dtype=args.dtype,
        source=args.source,
        arch=args.arch,
        vocab=args.vocab,
        config_from=args.config_from,
        max_shard_size=args.max_shard_size,
        scale=args.scale,
        density=args.density,
        allow_config_mismatch=args.allow_config_mismatch,
        recipe=args.recipe,
        dry_run=args.dry_run,
        overwrite=args.overwrite,
        push_to_hub=args.push_to_hub,
        private=args.private,
        token=args.token,
        trust_pickle=args.trust_pickle,
        **{name: getattr(args, name) for name in METHOD_PARAMETER_NAMES if getattr(args, name) is not None},
    )
    print(report.summary() if path is not None else report.plan.describe())
    if path is not None:
        print(f"merged model written to {path}")
    return 0
