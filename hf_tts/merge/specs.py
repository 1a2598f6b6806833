"""The merge methods and output dtypes as plain data: names, what each method needs, and the limits on
--layer-weights patterns.

Kept apart from the formulas (`hf_tts.merge.methods`) and the planner (`hf_tts.merge.plan`), which import torch, so
that `hf-tts merge --help` lists the choices without importing torch or transformers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodSpec:
    """What a method needs: its base (required / optional / none), how many sources, which recipe parameters it
    reads, whether each output element depends only on the same input elements (then it is merged in slices), and
    whether it draws random numbers (then `seed` makes it reproducible)."""

    name: str
    base: str  # "required" | "optional" | "none"
    min_sources: int
    max_sources: int | None
    parameters: tuple[str, ...]
    default_normalize: bool
    link: str
    random: bool = False


_TA = ("normalize", "lambda")
SPECS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("linear", "none", 2, None, ("normalize",), True, "[linear](https://arxiv.org/abs/2203.05482)"),
        MethodSpec("slerp", "none", 2, 2, (), False, "[SLERP](https://en.wikipedia.org/wiki/Slerp)"),
        MethodSpec("nuslerp", "optional", 2, 2, ("nuslerp_flatten", "nuslerp_row_wise"), False, "NuSLERP (mergekit)"),
        MethodSpec(
            "multislerp",
            "optional",
            2,
            None,
            ("normalize", "eps"),
            True,
            "[Multi-SLERP](https://goddard.blog/posts/multislerp-wow-what-a-cool-idea)",
        ),
        MethodSpec(
            "karcher",
            "optional",
            2,
            None,
            ("max_iter", "tol"),
            False,
            "[Karcher mean](https://arxiv.org/abs/2603.04972)",
        ),
        MethodSpec(
            "task_arithmetic", "required", 1, None, _TA, False, "[task arithmetic](https://arxiv.org/abs/2212.04089)"
        ),
        MethodSpec("ties", "required", 1, None, (*_TA, "density"), True, "[TIES](https://arxiv.org/abs/2306.01708)"),
        MethodSpec(
            "dare_linear",
            "required",
            1,
            None,
            (*_TA, "density", "rescale", "seed"),
            False,
            "[DARE](https://arxiv.org/abs/2311.03099) (linear)",
            random=True,
        ),
        MethodSpec(
            "dare_ties",
            "required",
            1,
            None,
            (*_TA, "density", "rescale", "seed"),
            False,
            "[DARE](https://arxiv.org/abs/2311.03099) with TIES sign consensus",
            random=True,
        ),
        MethodSpec(
            "breadcrumbs",
            "required",
            1,
            None,
            (*_TA, "density", "gamma", "rescale"),
            False,
            "[Model Breadcrumbs](https://arxiv.org/abs/2312.06795)",
        ),
        MethodSpec(
            "breadcrumbs_ties",
            "required",
            1,
            None,
            (*_TA, "density", "gamma", "rescale"),
            False,
            "[Model Breadcrumbs](https://arxiv.org/abs/2312.06795) with TIES sign consensus",
        ),
        MethodSpec(
            "della",
            "required",
            1,
            None,
            (*_TA, "density", "epsilon", "rescale", "seed"),
            True,
            "[DELLA](https://arxiv.org/abs/2406.11617)",
            random=True,
        ),
        MethodSpec(
            "della_linear",
            "required",
            1,
            None,
            (*_TA, "density", "epsilon", "rescale", "seed"),
            False,
            "[DELLA](https://arxiv.org/abs/2406.11617) (linear)",
            random=True,
        ),
        MethodSpec(
            "model_stock",
            "required",
            2,
            None,
            ("filter_wise",),
            False,
            "[Model Stock](https://arxiv.org/abs/2403.19522)",
        ),
        MethodSpec("sce", "required", 1, None, ("select_topk",), False, "[SCE](https://arxiv.org/abs/2408.07990)"),
        MethodSpec(
            "nearswap",
            "required",
            1,
            1,
            ("t",),
            False,
            "[NearSwap](https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001)",
        ),
    )
}
METHODS = tuple(SPECS)
# Methods that combine task vectors (source - base) and therefore need --base.
BASE_METHODS = tuple(name for name, spec in SPECS.items() if spec.base == "required")
DEFAULT_NORMALIZE = {name: spec.default_normalize for name, spec in SPECS.items()}
# DARE and DELLA rescale the kept entries to the task vector's L1 norm by default (mergekit's `rescale`).
DEFAULT_RESCALE = {"dare_linear": True, "dare_ties": True, "della": True, "della_linear": True}
# Output dtypes `--dtype` accepts (torch dtypes of these names: hf_tts.merge.plan.OUTPUT_DTYPES).
OUTPUT_DTYPE_NAMES = ("float32", "float16", "bfloat16", "float64")
# --layer-weights patterns are user regexes run against every tensor name. A pattern with nested quantifiers such as
# `^(\w+\.?)+Z$` can take exponential time on a name, and counted repeats such as `((a{1000}){1000}){1000}` take
# minutes to compile: each search gets a time limit (the `regex` module's timeout), and long patterns or large
# counted repeats are refused before compiling.
LAYER_RULE_TIMEOUT_S = 0.5
MAX_LAYER_PATTERN_CHARS = 1000
MAX_LAYER_PATTERN_REPEATS = 10_000  # product of every {m,n} bound in a pattern

__all__ = [
    "BASE_METHODS",
    "DEFAULT_NORMALIZE",
    "DEFAULT_RESCALE",
    "LAYER_RULE_TIMEOUT_S",
    "MAX_LAYER_PATTERN_CHARS",
    "MAX_LAYER_PATTERN_REPEATS",
    "METHODS",
    "MethodSpec",
    "OUTPUT_DTYPE_NAMES",
    "SPECS",
]
