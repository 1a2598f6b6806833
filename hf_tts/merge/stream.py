"""Streaming compute: the output is cut into slice jobs; worker threads read each job's slice of every input, merge
it, hand it to the writer, and hand a tensor's pages back once all its slices are done.

Peak memory is, per worker, one slice of every input and one slice-sized accumulator for elementwise methods
(linear, task arithmetic, TIES without pruning), and the method's few buffers for the largest tensor otherwise (fp32,
or fp64 for fp64). A slice's length shrinks as sources are added (`SLICE_BUDGET_ELEMENTS` over all inputs), so the
slice buffers do not grow with the number of sources; the distance statistics are summed as slices finish, holding
at most a window of results that finished ahead of their turn.

Every merged slice is checked after the cast to the output dtype: a NaN or Inf in an input is named with its
source; an output that overflows (large weights or lambda, or fp16's range) is named with its tensor.
"""

from __future__ import annotations

import collections
import contextlib
import math
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from hf_tts.errors import InputError
from hf_tts.merge import methods
from hf_tts.merge.allocator import release_freed_memory
from hf_tts.merge.plan import MergePlan, TensorTask
from hf_tts.merge.sources import TensorReader

# Elements per slice of an elementwise merge (1 MiB of fp32 per input): a slice costs a dozen calls whatever its size,
# so small slices are bound by call overhead. Streaming 4 x 1.35 GB from the page cache measured 2.07 s with 2^14,
# 1.51 s with 2^15, 0.96 s with 2^18 (2^19 alike) and 2.49 s with 2^20.
CHUNK_ELEMENTS = 1 << 18
# Elements of all inputs together in one worker's slice buffer (4 MiB of fp32): with more than four inputs each
# input's slice is shorter (at least MIN_CHUNK_ELEMENTS), so 1,000 sources cost no more buffer memory than four.
SLICE_BUDGET_ELEMENTS = 1 << 20
MIN_CHUNK_ELEMENTS = 1 << 10
# Slice results a worker may finish ahead of the earliest unfinished slice (their statistics wait to be summed in
# output order): bounds that memory; a worker this far ahead waits.
STATISTICS_WINDOW = 64
_NUMBERED_BLOCK = re.compile(r"^(.*?\.\d+)(?:\.|$)")


def block_name(key: str) -> str:
    """The block a tensor belongs to: up to its first layer index (`backbone.transformer_blocks.3`), else the first
    two name components (`backbone.time_embed`)."""
    match = _NUMBERED_BLOCK.match(key)
    return match.group(1) if match else ".".join(key.split(".")[:2])


# Whole tensors from this size up are followed by `release_freed_memory` (smaller ones leave little to release).
TRIM_AFTER_ELEMENTS = 1 << 20


@contextlib.contextmanager
def single_torch_thread() -> Iterator[None]:
    """Run each torch op on the thread that calls it, restoring the previous setting afterwards.

    The merge has its own worker threads (and hashing threads) on the cores; intra-op parallelism on top of them
    only makes each op wait for its slowest, descheduled helper (measured 3x slower merges).
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
    chunks (see `methods.is_elementwise`)."""
    return methods.is_elementwise(plan.recipe.method, plan.parameters)


def _merge(
    plan: MergePlan, task: TensorTask, inputs: torch.Tensor | Sequence[torch.Tensor], out: torch.Tensor | None
) -> torch.Tensor:
    """The merged values of `inputs` (the sources' slices stacked, or their whole tensors in a list; then the base if
    the method has one), in the accumulator dtype; linear and task arithmetic (always sliced) write into `out`."""
    method = plan.recipe.method
    parameters = plan.parameters
    weights = list(task.weights)
    sources = inputs[: len(plan.sources)]
    base = inputs[-1] if plan.base is not None else None
    if method == "linear":
        return methods.linear(sources, weights, parameters.normalize, out=out)
    if method == "slerp":
        return methods.slerp(sources[0], sources[1], weights[1] / math.fsum(weights))
    if method == "task_arithmetic":
        return methods.task_arithmetic(base, sources, weights, parameters.normalize, parameters.scale, out=out)
    if method == "nearswap":
        return methods.nearswap(base, sources[0], parameters.t)
    if method in methods.SPARSIFICATION:
        return methods.task_vector_merge(method, base, sources, weights, parameters, task.key)
    if method == "nuslerp":
        return methods.nuslerp(sources, weights, base, parameters.nuslerp_flatten, parameters.nuslerp_row_wise)
    if method == "multislerp":
        return methods.multislerp(sources, weights, base, parameters.normalize, parameters.eps, task.key)
    if method == "karcher":
        return methods.karcher(list(inputs), parameters.max_iter, parameters.tol)
    if method == "model_stock":
        return methods.model_stock(base, sources, parameters.filter_wise)
    if method == "sce":
        return methods.sce(base, sources, parameters.select_topk)
    raise AssertionError(f"no formula for {method!r}")  # the plan validated the name


def _merge_whole(
    plan: MergePlan, task: TensorTask, tensors: list[torch.Tensor]
) -> tuple[torch.Tensor, methods.TensorStatistics | None]:
    """A whole-tensor method's merge of `tensors` (the sources, then the base), with the tensor's distance
    statistics when the method's own pass yields them (model_stock's Gram matrix); None otherwise, and they are
    then taken slice by slice."""
    if plan.recipe.method == "model_stock":
        sources, base = tensors[: len(plan.sources)], tensors[-1]
        return methods.model_stock_with_statistics(base, sources, plan.parameters.filter_wise)
    return _merge(plan, task, tensors, None), None


def chunk_elements(input_count: int) -> int:
    """Elements of each input per slice: `CHUNK_ELEMENTS`, shorter when many inputs share the slice budget."""
    return min(CHUNK_ELEMENTS, max(MIN_CHUNK_ELEMENTS, SLICE_BUDGET_ELEMENTS // max(input_count, 1)))


def _check_inputs_finite(labels: list[str], rows: Sequence[torch.Tensor], squared_norms: list[float], key: str) -> None:
    """Name the input holding NaN or Inf. Only a non-finite squared norm can mean one (finite values may also
    overflow it), so only then are the values themselves checked."""
    for index, squared_norm in enumerate(squared_norms):
        if not math.isfinite(squared_norm) and not torch.isfinite(rows[index]).all():
            raise InputError(f"{labels[index]}: tensor {key!r} contains NaN or Inf; fix or drop that checkpoint")


def _chunk_statistics(
    labels: list[str], inputs: Sequence[torch.Tensor], merged: torch.Tensor, key: str, source_count: int
) -> methods.TensorStatistics:
    """(source . merge, |input|^2, |merge|^2) of one slice (`inputs`: one row per input, stacked or as views of the
    whole tensors, which are then never copied), read while it is still in the cache.

    The squared norms double as the NaN/Inf check: a NaN or Inf entry makes the norm non-finite (whatever the merge
    weights, a zero weight included), and only then, or when finite values overflow it, is the exact check run.
    """
    rows = [row.to(merged.dtype) for row in inputs]
    squared_norms = [torch.dot(row, row).item() for row in rows]
    _check_inputs_finite(labels, rows, squared_norms, key)
    dots = [torch.dot(row, merged).item() for row in rows[:source_count]]
    return dots, squared_norms, torch.dot(merged, merged).item()


def _linear_coefficients(plan: MergePlan, task: TensorTask) -> list[float] | None:
    """c with merge = sum_i c_i input_i (the sources, then the base), for the methods whose merge is that linear
    combination (linear, task arithmetic); None for the others."""
    method, parameters = plan.recipe.method, plan.parameters
    weights = list(task.weights)
    divisor = math.fsum(weights) if parameters.normalize else 1.0
    if method not in ("linear", "task_arithmetic") or divisor == 0:
        return None
    if method == "linear":
        return [weight / divisor for weight in weights]
    coefficients = [parameters.scale * weight / divisor for weight in weights]
    return [*coefficients, 1.0 - math.fsum(coefficients)]


def _gram_statistics(
    labels: list[str],
    inputs: torch.Tensor,
    merged: torch.Tensor,
    coefficients: list[float],
    key: str,
    source_count: int,
) -> methods.TensorStatistics:
    """`_chunk_statistics` of a merge that is the linear combination `coefficients` of the input rows, with one pass
    over the inputs instead of two: their Gram matrix G gives |input|^2 (its diagonal) and source . merge (G c).
    |merge|^2 comes from the merged values themselves, since it also guards against overflow in computing them."""
    gram = inputs @ inputs.T
    squared_norms = torch.diagonal(gram).tolist()
    _check_inputs_finite(labels, inputs, squared_norms, key)
    products = gram[:source_count] @ torch.tensor(coefficients, dtype=gram.dtype)
    return products.tolist(), squared_norms, torch.dot(merged, merged).item()


@dataclass(frozen=True)
class SliceJob:
    """Elements `start:start + count` of one tensor: the unit of work a merge worker takes."""

    index: int  # position in the output order; statistics are summed in this order, whatever the worker count
    task: TensorTask
    start: int
    count: int


def slice_jobs(plan: MergePlan, keys: Iterable[str]) -> list[SliceJob]:
    """The jobs that produce `keys`' tensors in order: `chunk_elements`-sized slices of merged tensors, one job per
    copied tensor (integer buffers, vocoder weights)."""
    tasks = {task.key: task for task in plan.tasks}
    chunk = chunk_elements(len(plan.inputs()))
    jobs: list[SliceJob] = []
    for key in keys:
        task = tasks[key]
        step = chunk if task.merged else max(task.info.numel, 1)
        for start in range(0, max(task.info.numel, 1), step):
            jobs.append(SliceJob(len(jobs), task, start, min(step, task.info.numel - start)))
    return jobs


class _SliceWorker:
    """One thread's merge state: its slice buffers (reused across keys) and, for methods that need whole tensors,
    the tensor merged last."""

    def __init__(self, plan: MergePlan, labelled: list[tuple[str, TensorReader]]):
        self.plan = plan
        self.labels = [label for label, _ in labelled]
        self.readers = [reader for _, reader in labelled]
        self.elementwise = _is_elementwise(plan)
        self.chunk = chunk_elements(len(self.readers))
        self._input_buffers: dict[torch.dtype, torch.Tensor] = {}  # per input dtype, one row per input
        self._accumulators: dict[torch.dtype, torch.Tensor] = {}  # per accumulator dtype
        # For whole-tensor methods: key, flat inputs, flat merge, and the tensor's statistics if the method gave them.
        self._whole: tuple[str, list[torch.Tensor], torch.Tensor, methods.TensorStatistics | None] | None = None

    def run(self, job: SliceJob) -> tuple[torch.Tensor, methods.TensorStatistics | None]:
        """(the job's merged elements in the output dtype, flat; their distance statistics, None for a copy or for a
        slice whose tensor's statistics came with its first slice)."""
        task = job.task
        if not task.merged:  # every source agrees (checked by the plan)
            return self.readers[0].tensor(task.key).reshape(-1), None
        if self.elementwise:
            # Converted once here (a no-op for fp32), not again in the merge formula and in the statistics.
            accumulator_dtype = methods.accumulator_dtype(task.info.dtype)
            inputs = self._read_stacked(job).to(accumulator_dtype)
            accumulator = self._buffer(self._accumulators, (self.chunk,), accumulator_dtype)
            merged = _merge(self.plan, task, inputs, accumulator[: job.count])
        else:
            if self._whole is None or self._whole[0] != task.key:
                self._whole = None  # drop the previous tensor's merge before making the next
                tensors = [reader.tensor(task.key) for reader in self.readers]
                merged_whole, whole_statistics = _merge_whole(self.plan, task, tensors)
                flats = [tensor.reshape(-1) for tensor in tensors]
                if whole_statistics is not None:
                    _check_inputs_finite(self.labels, flats, whole_statistics[1], task.key)
                self._whole = (task.key, flats, merged_whole.reshape(-1), whole_statistics)
            _, flats, whole, whole_statistics = self._whole
            merged = whole[job.start : job.start + job.count]
            if whole_statistics is not None:
                out = merged.to(task.out_dtype)
                # The whole tensor's norm bounds every element of every slice.
                _check_output_finite(self.plan, task, out, whole_statistics[2])
                return out, whole_statistics if job.start == 0 else None
            inputs = [flat[job.start : job.start + job.count] for flat in flats]
        coefficients = _linear_coefficients(self.plan, task) if self.elementwise else None
        if coefficients is None:
            statistics = _chunk_statistics(self.labels, inputs, merged, task.key, len(self.plan.sources))
        else:
            statistics = _gram_statistics(self.labels, inputs, merged, coefficients, task.key, len(self.plan.sources))
        out = merged.to(task.out_dtype)
        _check_output_finite(self.plan, task, out, statistics[2])
        return out, statistics

    def finish_key(self) -> None:
        self._whole = None

    def _read_stacked(self, job: SliceJob) -> torch.Tensor:
        dtype = job.task.info.dtype
        inputs = self._buffer(self._input_buffers, (len(self.readers), self.chunk), dtype)[:, : job.count]
        for reader, row in zip(self.readers, inputs):
            piece = reader.read(job.task.key, job.start, row)
            if piece.data_ptr() != row.data_ptr():  # a reader that hands out views of memory it already holds
                row.copy_(piece)
        return inputs

    @staticmethod
    def _buffer(buffers: dict[torch.dtype, torch.Tensor], shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        if dtype not in buffers:
            buffers[dtype] = torch.empty(shape, dtype=dtype)
        return buffers[dtype]


def _check_output_finite(plan: MergePlan, task: TensorTask, out: torch.Tensor, merged_squared_norm: float) -> None:
    """Refuse a merged slice that is not finite in the output dtype (the inputs were checked already, so this is an
    overflow: large weights or lambda, or a value beyond fp16's range). The slice's norm, already computed, bounds
    every element, so the elementwise check runs only when the norm is not safely inside the output range."""
    if math.isfinite(merged_squared_norm) and math.sqrt(merged_squared_norm) <= torch.finfo(out.dtype).max:
        return
    if bool(torch.isfinite(out).all()):
        return
    dtype_name = str(out.dtype).removeprefix("torch.")
    levers = "lower --lambda or the weights" if plan.base is not None else "lower the weights"
    raise InputError(
        f"the merged tensor {task.key!r} has NaN or Inf values in {dtype_name} (the merge overflows); {levers}, "
        "or use --dtype float32"
    )


class _InOrderStatistics:
    """Adds each slice's statistics to `stats` in output order (so the sums do not depend on which worker finished
    first) as soon as every earlier slice is done, holding at most `window` results that finished early."""

    def __init__(self, stats: DistanceStats, window: int):
        self.stats, self.window = stats, window
        self.next_index = 0
        self.pending: dict[int, tuple[SliceJob, methods.TensorStatistics | None]] = {}
        self.condition = threading.Condition()

    def wait_turn(self, job: SliceJob, stop: threading.Event) -> None:
        """Block while `job` is `window` or more slices ahead of the earliest unfinished one. The worker holding that
        slice never waits (its job is the earliest), so this cannot deadlock."""
        with self.condition:
            while job.index - self.next_index >= self.window and not stop.is_set():
                self.condition.wait(0.1)

    def add(self, job: SliceJob, statistics: methods.TensorStatistics | None) -> None:
        with self.condition:
            self.pending[job.index] = (job, statistics)
            while self.next_index in self.pending:
                done, done_statistics = self.pending.pop(self.next_index)
                if done_statistics is not None:
                    self.stats.add(block_name(done.task.key), *done_statistics)
                self.next_index += 1
            self.condition.notify_all()

    def wake(self) -> None:
        with self.condition:
            self.condition.notify_all()


def stream_merge(
    plan: MergePlan,
    keys: Iterable[str],
    write: Callable[[SliceJob, torch.Tensor], None],
    stats: DistanceStats,
    workers: int = 1,
) -> None:
    """Merge `keys`' tensors and hand each merged slice to `write(job, flat_tensor)` (called from worker threads, each
    slice once, in no particular order); add the distance statistics to `stats` in output order.

    Elementwise methods spread their slices over `workers` threads (each reads, merges and writes its own slices;
    torch ops and file I/O release the GIL). Methods that need whole tensors run on one thread, so memory stays at
    one tensor's merge. An error stops every worker; of the errors found by then, the one earliest in output order
    is raised.
    """
    labelled = [(f"source {index + 1} ({source.spec})", source.reader) for index, source in enumerate(plan.sources)]
    if plan.base is not None:
        labelled.append((f"base ({plan.base.spec})", plan.base.reader))
    jobs = slice_jobs(plan, keys)
    elementwise = _is_elementwise(plan)
    remaining = collections.Counter(job.task.key for job in jobs)  # slices left per key, to release its pages
    # Whole-tensor methods: each worker takes a whole tensor at a time (from a shared queue, so a large tensor does
    # not hold the others up), and may finish many slices ahead; what waits is only their statistics (a few numbers).
    window = STATISTICS_WINDOW * workers if elementwise else max(len(jobs), 1)
    in_order = _InOrderStatistics(stats, window)
    groups: collections.deque[list[SliceJob]] = collections.deque()
    if not elementwise:
        for job in jobs:
            if groups and groups[-1][0].task.key == job.task.key:
                groups[-1].append(job)
            else:
                groups.append([job])
    failures: dict[int, BaseException] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def next_jobs(worker_jobs: list[SliceJob] | None) -> Iterator[SliceJob]:
        if worker_jobs is not None:
            yield from worker_jobs
            return
        while True:
            with lock:
                if not groups:
                    return
                group = groups.popleft()
            yield from group

    def work(worker_jobs: list[SliceJob] | None) -> None:
        worker = _SliceWorker(plan, labelled)
        for job in next_jobs(worker_jobs):
            in_order.wait_turn(job, stop)
            if stop.is_set():
                return
            try:
                merged, job_statistics = worker.run(job)
                write(job, merged)
            except BaseException as error:  # noqa: BLE001 (re-raised once the workers stop)
                failures[job.index] = error
                stop.set()
                in_order.wake()
                return
            in_order.add(job, job_statistics)
            with lock:
                remaining[job.task.key] -= 1
                done = remaining[job.task.key] == 0
            if done:
                worker.finish_key()
                if not elementwise and job.task.info.numel >= TRIM_AFTER_ELEMENTS:
                    release_freed_memory()
                for _, reader in labelled:
                    reader.release(job.task.key)

    if workers == 1:
        work(jobs)
    else:
        assignments = [jobs[index::workers] if elementwise else None for index in range(workers)]
        threads = [threading.Thread(target=work, args=(assigned,), daemon=True) for assigned in assignments]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        except BaseException:  # Ctrl-C in the calling thread: let the workers finish their current slice and stop
            stop.set()
            in_order.wake()
            for thread in threads:
                thread.join()
            raise
    if failures:
        raise failures[min(failures)]
