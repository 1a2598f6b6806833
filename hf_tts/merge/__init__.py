"""Streaming checkpoint merge: plan (validate) -> stream (compute) -> write.

`merge(sources, weights, method, out_dir, ...)` is the Python entry point (`hf-tts merge` calls it): it validates
every source from headers, streams one tensor at a time into the output shards inside a temporary folder, writes
config, tokenizer, recipe and model card, renames the folder into place and optionally pushes it in one commit.

Importing this subpackage is light (no torch): the planner and the stream load when `merge` runs or when one of
their names (`MergeRecipe`, `LayerRule`, ...) is first read, so `hf-tts merge --help` and the light
`hf_tts.merge.specs` stay fast.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from hf_tts.errors import InputError
from hf_tts.file_utils import atomic_output_dir, check_output_target, sha256_file
from hf_tts.merge.specs import SPECS

if TYPE_CHECKING:
    from hf_tts.merge.plan import LayerRule, MergePlan, MergeRecipe

HASH_WORKERS = 2
# The progress bar appears only on merges that run longer than this (seconds).
PROGRESS_DELAY_S = 1.0
# Threads that merge slices. Streaming is bound by memory copies and per-slice calls: two threads on two cores
# measured 1.3-2x faster than one; beyond four, memory bandwidth runs out first.
MERGE_WORKERS = max(1, min(4, os.cpu_count() or 1))
# Method parameters `merge()` takes as keyword arguments (their defaults are MergeRecipe's).
METHOD_PARAMETER_NAMES = (
    "rescale", "gamma", "epsilon", "t", "select_topk", "filter_wise", "max_iter", "tol", "eps", "nuslerp_flatten",
    "nuslerp_row_wise", "seed",
)  # fmt: skip


@dataclass
class MergeReport:
    """What a merge did: the plan, each input file's sha256, the per-block distances and the bytes written."""

    plan: MergePlan
    input_sha256: dict[str, dict[str, str]] = field(default_factory=dict)  # source spec -> file name -> sha256
    distances: dict[str, list[float]] = field(default_factory=dict)  # block -> cosine distance of each source
    bytes_written: int = 0
    seconds: float = 0.0
    commit_url: str | None = None

    def summary(self) -> str:
        lines = [self.plan.describe(), f"wrote {self.bytes_written / 1e6:.1f} MB in {self.seconds:.1f} s"]
        if self.commit_url:
            lines.append(f"pushed: {self.commit_url}")
        return "\n".join(lines)


class MergeResult(NamedTuple):
    path: Path | None  # None for a dry run
    report: MergeReport


def _card_sources(plan: MergePlan, hashes: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    rows = []
    for index, (source, weight) in enumerate(zip(plan.sources, plan.recipe.weights)):
        rows.append({"index": index + 1, "source": source, "weight": weight, "sha256": hashes[source.spec]})
    if plan.base is not None:
        rows.append({"index": "base", "source": plan.base, "weight": None, "sha256": hashes[plan.base.spec]})
    return rows


def _write_card(plan: MergePlan, folder: Path, model_id: str, report: MergeReport, recipe_yaml: str) -> None:
    """The package's TTS merge card for its own model families and XTTS; a generic card (architecture, parameter
    count, pipeline tag and library from the sources' card and config) for any other model."""
    from hf_tts.hub.cards import pipeline_tag_for_architecture, render_model_card, source_card_metadata
    from hf_tts.merge.write import PLOT_NAME

    config = None
    if plan.layout == "safetensors" and (folder / "config.json").is_file():
        from transformers import CONFIG_MAPPING, AutoConfig

        # A model type this installation does not know (merged from what its config.json says) gets a card without
        # the config-derived parts rather than failing after the merge.
        model_type = plan.donor.config.get("model_type")
        if isinstance(model_type, str) and model_type in CONFIG_MAPPING:
            config = AutoConfig.from_pretrained(folder)
    hub_ids = sorted({source.hub_id for source in plan.inputs() if source.hub_id})
    context: dict[str, Any] = {
        "merge": plan.recipe,
        "method_link": SPECS[plan.recipe.method].link,
        "method_parameters": plan.recipe.parameter_document(),
        "layout": plan.layout,
        "family": plan.family,
        "merge_sources": _card_sources(plan, report.input_sha256),
        "recipe_yaml": recipe_yaml,
        "plot_name": PLOT_NAME,
        "distances": report.distances,
        "tensor_count": len(plan.tasks),
        "copied_buffers": [task.key for task in plan.tasks if not task.merged],
    }
    generic = plan.layout == "safetensors" and not plan.family.startswith("hf_tts_")
    options: dict[str, Any] = {}
    if generic:
        architectures = plan.donor.config.get("architectures")
        architecture = architectures[0] if isinstance(architectures, list) and architectures else None
        source_card = source_card_metadata(plan.donor.folder)
        model_type = plan.donor.config.get("model_type")
        library = source_card.get("library_name") or ("transformers" if isinstance(model_type, str) else None)
        context.update(
            architecture=architecture if isinstance(architecture, str) else model_type,
            model_type=model_type,
            parameter_count=sum(task.info.numel for task in plan.tasks if task.info.dtype.is_floating_point),
        )
        options = {
            "library_name": library or "safetensors",
            "pipeline_tag": source_card.get("pipeline_tag") or pipeline_tag_for_architecture(context["architecture"]),
            "license": source_card.get("license"),
            "language": source_card.get("language"),
        }
    card = render_model_card(
        kind="merge_generic" if generic else "merge",
        config=config,
        base_model=hub_ids or None,
        base_model_relation="merge" if hub_ids else None,
        model_id=model_id,
        extra_context=context,
        **options,
    )
    if plan.layout == "xtts":
        card.data.tags = [*(card.data.tags or []), "xtts"]
    (folder / "README.md").write_text(str(card), encoding="utf-8")


def merge(
    sources: Sequence[str | os.PathLike] | None = None,
    weights: Sequence[float] | None = None,
    method: str = "linear",
    out_dir: str | os.PathLike | None = None,
    *,
    base: str | os.PathLike | None = None,
    normalize: bool | None = None,
    layer_weights: Sequence[str | LayerRule] = (),
    dtype: str | None = None,
    source: str = "ema",
    arch: str | None = None,
    vocab: str | os.PathLike | None = None,
    config_from: str | os.PathLike | None = None,
    max_shard_size: str | int = "5GB",
    scale: float = 1.0,
    density: float = 1.0,
    allow_config_mismatch: bool = False,
    recipe: str | os.PathLike | MergeRecipe | None = None,
    dry_run: bool = False,
    overwrite: bool = False,
    push_to_hub: str | None = None,
    private: bool = False,
    token: str | None = None,
    trust_pickle: bool = False,
    **method_parameters: Any,
) -> MergeResult:
    """Merge checkpoints of one model into `out_dir`; returns `(path, report)`.

    `sources` are package folders, Hub repo ids, upstream F5/E2 checkpoint files (with `arch`/`vocab`) or XTTS-v2
    checkpoints; `weights` one per source (default: equal). `method` is linear, slerp (two sources, t = w2/(w1+w2)),
    task_arithmetic, ties, dare_linear, dare_ties, breadcrumbs, breadcrumbs_ties, della, della_linear, model_stock, sce,
    nearswap (these need `base`; `scale` is lambda, `density` the kept fraction), nuslerp, multislerp or karcher (base
    optional). Further method parameters are keyword arguments named as in mergekit (`METHOD_PARAMETER_NAMES`:
    rescale, gamma, epsilon, t, select_topk, filter_wise, max_iter, tol, eps, nuslerp_flatten, nuslerp_row_wise,
    seed); see the README for each method's formula.
    `layer_weights` are `"REGEX=W1,W2,..."` rules (first match wins) overriding `weights` per tensor. `recipe` (a
    YAML path or a `MergeRecipe`) replaces all the merge-defining arguments. `dry_run` validates and returns the
    plan without writing. Nothing is left behind on error; an existing `out_dir` needs `overwrite=True`.

    Everything is validated before the first byte is written: the push target, every number, the sources, and
    `out_dir` (also under `dry_run`, when given): it may not be, contain or lie inside any input file or folder.
    """
    from hf_tts.merge.plan import LayerRule, MergeRecipe, build_plan
    from hf_tts.merge.stream import DistanceStats, single_torch_thread

    if push_to_hub is not None:
        from hf_tts.hub.push import validate_push_target

        validate_push_target(push_to_hub, token)
    for name, value in (("sources", sources), ("weights", weights), ("layer_weights", layer_weights)):
        if isinstance(value, (str, bytes, os.PathLike)):
            raise InputError(f"{name} must be a list, got the single value {value!r}")
    unknown = sorted(set(method_parameters) - set(METHOD_PARAMETER_NAMES))
    if unknown:
        raise InputError(f"unknown merge parameter {unknown[0]!r}; valid: {', '.join(METHOD_PARAMETER_NAMES)}")
    if recipe is not None:
        if sources:
            raise InputError("give either a recipe or sources, not both (the recipe lists its sources)")
        merge_recipe = recipe if isinstance(recipe, MergeRecipe) else MergeRecipe.from_yaml(recipe)
    else:
        if not sources:
            raise InputError("no sources given: pass at least two checkpoints (or a recipe)")
        merge_recipe = MergeRecipe(
            models=[os.fspath(path) if isinstance(path, os.PathLike) else path for path in sources],
            weights=None if weights is None else list(weights),
            method=method,
            base=None if base is None else str(base),
            normalize=normalize,
            scale=scale,
            density=density,
            layer_weights=[rule if isinstance(rule, LayerRule) else LayerRule.parse(rule) for rule in layer_weights],
            dtype=dtype,
            source=source,
            arch=arch,
            vocab=None if vocab is None else str(vocab),
            config_from=None if config_from is None else str(config_from),
            max_shard_size=max_shard_size,
            allow_config_mismatch=allow_config_mismatch,
            **{name: value for name, value in method_parameters.items() if value is not None or name == "t"},
        )
    named_inputs = [*merge_recipe.models, merge_recipe.base, merge_recipe.config_from, merge_recipe.vocab]
    named_inputs += [merge_recipe.arch, None if recipe is None or isinstance(recipe, MergeRecipe) else recipe]
    if out_dir is not None:
        # Cheap checks first (the plan may download Hub sources); again below with every file the plan resolved.
        check_output_target(out_dir, inputs=_local_paths(named_inputs), overwrite=overwrite)
    elif not dry_run:
        raise InputError("no output folder: pass out_dir (--out)")
    plan = build_plan(merge_recipe, trust_pickle=trust_pickle, token=token)
    inputs = [*_local_paths(named_inputs), *_plan_inputs(plan)]
    if out_dir is not None:
        check_output_target(out_dir, inputs=inputs, overwrite=overwrite)
    report = MergeReport(plan)
    if dry_run:
        return MergeResult(None, report)
    from hf_tts.merge import write

    started = time.perf_counter()
    files = {source.spec: source.files for source in plan.inputs()}
    # Hashing runs beside the merge (hashlib releases the GIL); two workers so that, when the merge finishes first,
    # the remaining files are hashed on both cores.
    with (
        ThreadPoolExecutor(max_workers=HASH_WORKERS) as pool,
        atomic_output_dir(out_dir, overwrite=overwrite, inputs=inputs) as staging,
    ):
        # The plotting library's import (about a second) overlaps the merge instead of following it.
        pool.submit(write.import_plotting)
        hashes = {
            spec: {path.name: pool.submit(sha256_file, path, cache=True) for path in paths}
            for spec, paths in files.items()
        }
        stats = DistanceStats(len(plan.sources))
        try:
            with single_torch_thread(), _progress_bar(plan.total_bytes) as progress:
                if plan.layout == "xtts":
                    written = [write.write_xtts_weights(plan, staging, stats, MERGE_WORKERS, progress)]
                else:
                    written = write.write_weight_shards(plan, staging, stats, plan.shards, MERGE_WORKERS, progress)
        except BaseException:
            # An error or Ctrl-C: do not hash the remaining inputs before the staging folder is removed.
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        write.copy_companion_files(plan, staging)
        report.bytes_written = sum(path.stat().st_size for path in written)
        report.distances = stats.distances()
        report.input_sha256 = {spec: {name: f.result() for name, f in named.items()} for spec, named in hashes.items()}
        recipe_yaml = plan.recipe.with_absolute_paths().to_yaml()
        (staging / write.RECIPE_NAME).write_text(recipe_yaml, encoding="utf-8")
        labels = [f"{index + 1}: {Path(s.spec).name or s.spec}" for index, s in enumerate(plan.sources)]
        write.plot_distances(report.distances, labels, staging / write.PLOT_NAME)
        _write_card(plan, staging, f"./{Path(out_dir).absolute().name}", report, recipe_yaml)
    report.seconds = time.perf_counter() - started
    path = Path(out_dir)
    if push_to_hub:
        from hf_tts.hub.push import push_folder

        commit = push_folder(
            path, push_to_hub, private=private, token=token, commit_message=f"Merge ({plan.recipe.method}) with hf_tts"
        )
        report.commit_url = str(commit)
    return MergeResult(path, report)


@contextlib.contextmanager
def _progress_bar(total_bytes: int) -> Iterator[Callable[[int], None]]:
    """A bar over the bytes written, shown once the merge has run `PROGRESS_DELAY_S` (a small merge prints nothing)
    and only on a terminal (tqdm's disable=None, so logs and captured stderr keep one line per error). It is a
    `huggingface_hub.utils.tqdm`, which `--quiet` silences. Yields the thread-safe `advance(bytes)`."""
    from huggingface_hub.utils import tqdm

    lock = threading.Lock()
    with tqdm(
        total=total_bytes,
        desc="merging",
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=None,
        delay=PROGRESS_DELAY_S,
    ) as bar:

        def advance(size: int) -> None:
            with lock:  # the worker threads write slices concurrently; tqdm's counter is not atomic
                bar.update(size)

        yield advance


def _local_paths(specs: Sequence[Any]) -> list[str]:
    """The entries that name something on disk (str or path); Hub ids and preset names are ignored by the output
    check because no such path exists."""
    return [os.fspath(spec) for spec in specs if isinstance(spec, (str, os.PathLike)) and os.fspath(spec)]


def _plan_inputs(plan: MergePlan) -> list[Path]:
    """Every file and folder the merge reads: weight files, vocab files, model folders (Hub snapshots included) and
    the sidecar files an XTTS folder contributes (not its folder, which may be any folder holding checkpoints)."""
    from hf_tts.merge.write import XTTS_SIDECARS

    paths: list[Path] = []
    for source in [*plan.inputs(), plan.donor]:
        paths += [*source.files, *source.vocab_files.values()]
        if source.folder is not None:
            if source.kind == "xtts":
                paths += [source.folder / name for name in XTTS_SIDECARS]
            else:
                paths.append(source.folder)
    return paths


class _CallableModule(types.ModuleType):
    """`hf_tts.merge` is this subpackage, and `hf_tts.merge(...)` calls `merge`: binding the attribute to the function
    instead would break `import hf_tts.merge.plan as plan` (the import walks attributes)."""

    def __call__(self, *args: Any, **kwargs: Any) -> MergeResult:
        return merge(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # The planner's public names, imported (with torch) on first use.
        if name in _PLAN_NAMES:
            from hf_tts.merge import plan

            return getattr(plan, name)
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")


_PLAN_NAMES = ("LayerRule", "MergePlan", "MergeRecipe", "build_plan")


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["LayerRule", "MergeRecipe", "MergeReport", "MergeResult", "merge"]
