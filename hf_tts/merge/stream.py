"""Per-tensor streaming compute: for each key, map the sources' tensors, merge them, hand pages back.

Peak memory is the merge method's few buffers for the largest tensor (fp32, or fp64 for fp64), whatever the number
of sources; the input views are memory maps that are released as soon as their key is done.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch

from hf_tts.errors import InputError
from hf_tts.merge import methods
from hf_tts.merge.plan import MergePlan, TensorTask

_NUMBERED_BLOCK = re.compile(r"^(.*?\.\d+)(?:\.|$)")


def block_name(key: str) -> str:
    """The block a tensor belongs to: up to its first layer index (`backbone.transformer_blocks.3`), else the first
    two name components (`backbone.time_embed`)."""
    match = _NUMBERED_BLOCK.match(key)
    return match.group(1) if match else ".".join(key.split(".")[:2])


@dataclass
class DistanceStats:
    """Per block, the dot products and squared norms needed for each source's cosine distance from the merge."""

    source_count: int
    dots: dict[str, list[float]] = field(default_factory=dict)
    source_norms: dict[str, list[float]] = field(default_factory=dict)
    merged_norms: dict[str, float] = field(default_factory=dict)

    def add(self, key: str, views: list[torch.Tensor], squared_norms: list[float], merged: torch.Tensor) -> None:
        block = block_name(key)
        dots = self.dots.setdefault(block, [0.0] * self.source_count)
        norms = self.source_norms.setdefault(block, [0.0] * self.source_count)
        flat = merged.reshape(-1)
        for index, (view, squared_norm) in enumerate(zip(views, squared_norms)):
            dots[index] += torch.dot(view.reshape(-1).to(merged.dtype), flat).item()
            norms[index] += squared_norm
        self.merged_norms[block] = self.merged_norms.get(block, 0.0) + torch.dot(flat, flat).item()

    def distances(self) -> dict[str, list[float]]:
        """block -> cosine distance (1 - cos) of each source from the merged weights, in the model's key order."""
        result = {}
        for block, dots in self.dots.items():
            merged_norm = math.sqrt(self.merged_norms[block])
            row = []
            for dot, norm in zip(dots, self.source_norms[block]):
                denominator = math.sqrt(norm) * merged_norm
                row.append(1.0 - dot / denominator if denominator > 0 else 0.0)
            result[block] = row
        return result


def _merge_one(plan: MergePlan, task: TensorTask, views: list[torch.Tensor], base: torch.Tensor | None):
    recipe = plan.recipe
    weights = list(task.weights)
    if recipe.method == "linear":
        return methods.linear(views, weights, recipe.normalize)
    if recipe.method == "slerp":
        return methods.slerp(views[0], views[1], weights[1] / math.fsum(weights))
    if recipe.method == "task_arithmetic":
        return methods.task_arithmetic(base, views, weights, recipe.normalize, recipe.scale)
    return methods.ties(base, views, weights, recipe.density, recipe.normalize, recipe.scale)


def merged_tensors(
    plan: MergePlan, keys: Iterable[str], stats: DistanceStats
) -> Iterator[tuple[TensorTask, torch.Tensor]]:
    """Yield (task, merged tensor in the output dtype) for `keys`, in that order."""
    tasks = {task.key: task for task in plan.tasks}
    labelled = [(f"source {index + 1} ({source.spec})", source) for index, source in enumerate(plan.sources)]
    if plan.base is not None:
        labelled.append((f"base ({plan.base.spec})", plan.base))
    for key in keys:
        task = tasks[key]
        views = [source.reader.tensor(key) for _, source in labelled]
        if not task.merged:
            output = views[0].clone()  # every source agrees (checked by the plan)
        else:
            squared_norms = []
            for (label, _), view in zip(labelled, views):
                flat = view.reshape(-1)
                squared_norms.append(torch.dot(flat, flat).item())
                # The squared norm (needed for the distance plot anyway) is NaN/Inf whenever an entry is; only when
                # it overflows is the exact (much slower) isfinite check needed.
                if not math.isfinite(squared_norms[-1]) and not torch.isfinite(view).all():
                    raise InputError(f"{label}: tensor {key!r} contains NaN or Inf; fix or drop that checkpoint")
            source_views = views[: len(plan.sources)]
            base = views[-1] if plan.base is not None else None
            merged = _merge_one(plan, task, source_views, base)
            stats.add(key, source_views, squared_norms[: len(plan.sources)], merged)
            output = merged.to(task.out_dtype)
        del views
        yield task, output
        for _, source in labelled:
            source.reader.release(key)
