"""glibc's malloc during a merge: handing freed memory back, and the `hf-tts merge` program's thresholds.

Torch-free, so the merge command can set the thresholds before anything large is imported. Elsewhere than glibc
both are no-ops.
"""

from __future__ import annotations

from hf_tts.libc import libc_function

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# Just above a worker's slice buffer (4 MiB: every input's slice of an elementwise merge), which stays on the heap.
MMAP_THRESHOLD_BYTES = (4 << 20) + (64 << 10)
TRIM_THRESHOLD_BYTES = 32 << 20


def release_freed_memory() -> None:
    """Hand the memory freed so far back to the system (glibc's malloc_trim).

    glibc serves a worker's whole-tensor buffers from that thread's heap once it has freed one as large, and keeps
    freed heap memory as the process's: over a merge of Base-size models the worker heaps fragmented to 710 MiB above
    idle for TIES. Trimming after each whole tensor keeps only the working set of the tensors in progress. A fixed
    mmap threshold alone did the same but also trimmed the heap after every slice, so each temporary was faulted in
    afresh (karcher took 20 s against 12 s); the `hf-tts merge` program sets both thresholds for its process
    (`use_streaming_malloc_settings`), which a library call leaves alone.
    """
    trim = libc_function("malloc_trim")
    if trim is not None:
        trim(0)


def use_streaming_malloc_settings() -> None:
    """Set glibc's malloc for a streaming merge, for the life of the process (glibc cannot return to its adaptive
    thresholds): what the `hf-tts merge` program does before merging.

    Allocations above a slice buffer (the whole-tensor buffers of SLERP, the pruning methods, model_stock: tens of
    MB each) get their own mapping, returned to the system when freed, instead of staying in the worker threads'
    heaps until the next trim: peak memory above idle went from +509 to +291 MiB for TIES and from +487 to +349 MiB
    for SCE, at the same speed. Up to 32 MiB of freed heap is kept, so the per-slice temporaries of elementwise
    merges are not faulted in again for every slice (the threshold alone cost task_arithmetic 0.3 s).
    """
    mallopt = libc_function("mallopt")
    if mallopt is None:  # not glibc
        return
    mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
