"""Per-tensor streaming compute: for each key, map the sources' tensors, merge them slice by slice, hand pages back.

Peak memory is one slice-sized accumulator for elementwise methods (linear, task arithmetic, TIES without pruning)
and the method's few buffers for the largest tensor otherwise (fp32, or fp64 for fp64), whatever the number of
sources; the input views are memory maps that are released as soon as their key is done.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch

from hf_tts.errors import InputError
from hf_tts.merge import methods
from hf_tts.merge.plan import MergePlan, TensorTask
from hf_tts.merge.sources import TensorReader

# Elements per slice of an elementwise merge (128 KiB of fp32): every source's slice and the accumulator fit in a 1 MiB
# L2 cache together, so each input byte is fetched from memory once (2^15 and 2^16 measured alike, 2^14 slower).
CHUNK_ELEMENTS = 1 << 15
_NUMBERED_BLOCK = re.compile(r"^(.*?\.\d+)(?:\.|$)")


def block_name(key: str) -> str:
    """The block a tensor belongs to: up to its first layer index (`backbone.transformer_blocks.3`), else the first
    two name components (`backbone.time_embed`)."""
    match = _NUMBERED_BLOCK.match(key)
    return match.group(1) if match else ".".join(key.split(".")[:2])


@contextlib.contextmanager
def single_torch_thread() -> Iterator[None]:
    """Run torch ops on the calling thread only, restoring the previous setting afterwards.

    A slice is too small for intra-op parallelism to pay, the other core hashes the inputs, and on a busy machine
    each parallel op waits for its slowest (descheduled) worker: measured 3x slower merges with 2 threads.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class DistanceStats:
    """Per block, the dot products and squared norms needed for each source's cosine distance from the merge."""

    source_count: int
    dots: dict[str, list[float]] = field(default_factory=dict)
    source_norms: dict[str, list[float]] = field(default_factory=dict)
    merged_norms: dict[str, float] = field(default_factory=dict)

    def add(self, block: str, dots: list[float], squared_norms: list[float], merged_squared_norm: float) -> None:
        """Add one chunk's dot products (source . merge), sources' squared norms and the merge's squared norm."""
        block_dots = self.dots.setdefault(block, [0.0] * self.source_count)
        block_norms = self.source_norms.setdefault(block, [0.0] * self.source_count)
        for index in range(self.source_count):
            block_dots[index] += dots[index]
            block_norms[index] += squared_norms[index]
        self.merged_norms[block] = self.merged_norms.get(block, 0.0) + merged_squared_norm

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


def _is_elementwise(plan: MergePlan) -> bool:
    """Whether each output element depends only on the same element of the inputs, so a tensor can be merged in
    chunks. SLERP needs the whole tensor's angle, magnitude pruning the whole tensor's ranking."""
    recipe = plan.recipe
    return recipe.method in ("linear", "task_arithmetic") or (recipe.method == "ties" and recipe.density >= 1.0)


def _merge(plan: MergePlan, task: TensorTask, views: list[torch.Tensor], base: torch.Tensor | None, out: torch.Tensor):
    """The merged values of `views` (whole tensors or matching chunks), in the accumulator dtype; linear merges
    write into `out`."""
    recipe = plan.recipe
    weights = list(task.weights)
    if recipe.method == "linear":
        return methods.linear(views, weights, recipe.normalize, out=out)
    if recipe.method == "slerp":
        return methods.slerp(views[0], views[1], weights[1] / math.fsum(weights))
    if recipe.method == "task_arithmetic":
        return methods.task_arithmetic(base, views, weights, recipe.normalize, recipe.scale)
    return methods.ties(base, views, weights, recipe.density, recipe.normalize, recipe.scale)


def _chunk_statistics(
    labelled_chunks: list[tuple[str, torch.Tensor]], merged: torch.Tensor, key: str, source_count: int
) -> tuple[list[float], list[float], float]:
    """(source . merge, |input|^2, |merge|^2) of one chunk, read while it is still in the cache.

    The squared norms double as the NaN/Inf check: a NaN or Inf entry makes the norm non-finite (whatever the merge
    weights, a zero weight included), and only then, or when finite values overflow it, is the exact check run.
    """
    dots, squared_norms = [], []
    for index, (label, chunk) in enumerate(labelled_chunks):
        chunk = chunk if chunk.dtype == merged.dtype else chunk.to(merged.dtype)
        squared_norms.append(torch.dot(chunk, chunk).item())
        if not math.isfinite(squared_norms[-1]) and not torch.isfinite(chunk).all():
            raise InputError(f"{label}: tensor {key!r} contains NaN or Inf; fix or drop that checkpoint")
        if index < source_count:
            dots.append(torch.dot(chunk, merged).item())
    return dots, squared_norms, torch.dot(merged, merged).item()


def _merged_slices(
    plan: MergePlan, task: TensorTask, readers: list[TensorReader], buffers: list[torch.Tensor], out: torch.Tensor
) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
    """(the inputs' slices, the merged slice) of an elementwise merge, each input slice read into its buffer."""
    source_count = len(plan.sources)
    for start in range(0, task.info.numel, CHUNK_ELEMENTS):
        chunks = [reader.read(task.key, start, buffer) for reader, buffer in zip(readers, buffers)]
        base = chunks[-1] if plan.base is not None else None
        yield chunks, _merge(plan, task, chunks[:source_count], base, out[: chunks[0].numel()])


def _slices_of_whole_merge(
    plan: MergePlan, task: TensorTask, readers: list[TensorReader]
) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
    """(the inputs' slices, the merged slice) of a method that needs whole tensors, merged once up front."""
    views = [reader.tensor(task.key) for reader in readers]
    base = views[-1] if plan.base is not None else None
    merged = _merge(plan, task, views[: len(plan.sources)], base, None).reshape(-1)
    flats = [view.reshape(-1) for view in views]
    for start in range(0, task.info.numel, CHUNK_ELEMENTS):
        yield [flat[start : start + CHUNK_ELEMENTS] for flat in flats], merged[start : start + CHUNK_ELEMENTS]


def merged_chunks(
    plan: MergePlan, keys: Iterable[str], stats: DistanceStats
) -> Iterator[tuple[TensorTask, torch.Tensor]]:
    """Yield (task, next piece of its merged tensor in the output dtype, flattened) for `keys`, in that order.

    Elementwise methods run on `CHUNK_ELEMENTS`-sized slices: each slice of every input is read once into a small
    reused buffer, and the accumulation, the NaN/Inf check, the distance statistics and the cast to the output dtype
    all use it while it is in the cache. A yielded piece is only valid until the next one is requested.
    """
    tasks = {task.key: task for task in plan.tasks}
    labelled = [(f"source {index + 1} ({source.spec})", source) for index, source in enumerate(plan.sources)]
    if plan.base is not None:
        labelled.append((f"base ({plan.base.spec})", plan.base))
    labels = [label for label, _ in labelled]
    readers = [source.reader for _, source in labelled]
    source_count = len(plan.sources)
    elementwise = _is_elementwise(plan)
    # Reused across keys: per input dtype one slice buffer per input, per accumulator dtype one output slice.
    input_buffers: dict[torch.dtype, list[torch.Tensor]] = {}
    accumulators: dict[torch.dtype, torch.Tensor] = {}
    for key in keys:
        task = tasks[key]
        if not task.merged:
            yield task, readers[0].tensor(key).reshape(-1)  # every source agrees (checked by the plan)
        else:
            if elementwise:
                dtype, accumulator_dtype = task.info.dtype, methods.accumulator_dtype(task.info.dtype)
                if dtype not in input_buffers:
                    input_buffers[dtype] = [torch.empty(CHUNK_ELEMENTS, dtype=dtype) for _ in readers]
                if accumulator_dtype not in accumulators:
                    accumulators[accumulator_dtype] = torch.empty(CHUNK_ELEMENTS, dtype=accumulator_dtype)
                slices = _merged_slices(plan, task, readers, input_buffers[dtype], accumulators[accumulator_dtype])
            else:
                slices = _slices_of_whole_merge(plan, task, readers)
            block = block_name(key)
            for chunks, merged in slices:
                stats.add(block, *_chunk_statistics(list(zip(labels, chunks)), merged, key, source_count))
                yield task, merged.to(task.out_dtype)
            del slices  # drops a whole-tensor merge before the pages are released
        for reader in readers:
            reader.release(key)
