"""Writing a merge: weight shards streamed to disk, index, config / tokenizer / vocoder copies, the recipe, and the
model card with its per-block distance plot.

Every safetensors header is computed from the plan (all shapes and dtypes are known before any data is read), so each
tensor's bytes go to disk as soon as they are merged and no shard is ever held in memory.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from hf_tts.merge.allocator import release_freed_memory
from hf_tts.merge.plan import MergePlan
from hf_tts.merge.sources import (
    COMPANION_FILES,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    MappedSafetensors,
    TensorInfo,
)
from hf_tts.merge.stream import DistanceStats, SliceJob, stream_merge

RECIPE_NAME = "merge_recipe.yaml"
PLOT_NAME = "merge_distance.png"
XTTS_WEIGHTS_NAME = "model.pth"
# Files of a Coqui XTTS folder that travel with the merged `model.pth`.
XTTS_SIDECARS = ("config.json", "vocab.json", "speakers_xtts.pth", "mel_stats.pth", "dvae.pth")
_DTYPE_NAMES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def _shard_names(count: int) -> list[str]:
    if count == 1:
        return [WEIGHTS_NAME]
    return [f"model-{index + 1:05d}-of-{count:05d}.safetensors" for index in range(count)]


def write_weight_shards(
    plan: MergePlan,
    folder: Path,
    stats: DistanceStats,
    shards: list[list[str]],
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> list[Path]:
    """Stream the merged tensors into safetensors shards under `folder` (plus the index when there are several);
    `workers` threads merge slices and write each at its offset, known from the header. `progress(bytes)` is called
    (from the worker threads) after each slice is written."""
    out_dtypes = {task.key: task.out_dtype for task in plan.tasks}
    shapes = {task.key: task.info.shape for task in plan.tasks}
    paths, weight_map = [], {}
    for name, keys in zip(_shard_names(len(shards)), shards):
        # Largest element size first keeps every tensor aligned to its element size (what safetensors itself does).
        ordered = sorted(keys, key=lambda key: (-torch.empty((), dtype=out_dtypes[key]).element_size(), key))
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offsets, offset = {}, 0
        for key in ordered:
            size = TensorInfo(shapes[key], out_dtypes[key]).nbytes
            header[key] = {
                "dtype": _DTYPE_NAMES[out_dtypes[key]],
                "shape": list(shapes[key]),
                "data_offsets": [offset, offset + size],
            }
            offsets[key] = offset
            offset += size
            weight_map[key] = name
        header_bytes = json.dumps(header, separators=(",", ":")).encode()
        header_bytes += b" " * (-len(header_bytes) % 8)
        data_start = 8 + len(header_bytes)
        path = folder / name
        with open(path, "wb") as handle:
            handle.write(struct.pack("<Q", len(header_bytes)) + header_bytes)
            handle.flush()
            os.ftruncate(handle.fileno(), data_start + offset)
            positions = {key: data_start + key_offset for key, key_offset in offsets.items()}
            write = functools.partial(_write_slice, handle.fileno(), positions, progress)
            stream_merge(plan, ordered, write, stats, workers)
        release_freed_memory()  # what the shard's tensors freed
        paths.append(path)
    if len(paths) > 1:
        index = {"metadata": {"total_size": plan.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return paths


def _write_slice(
    descriptor: int,
    positions: dict[str, int],
    progress: Callable[[int], None] | None,
    job: SliceJob,
    merged: torch.Tensor,
) -> None:
    """Write a merged slice at its place in the shard (`positions`: where each tensor's bytes begin); `os.pwrite`
    until every byte is written (a regular file may take fewer bytes per call)."""
    view = memoryview(merged.view(torch.uint8).numpy()).cast("B")
    position = positions[job.task.key] + job.start * merged.element_size()
    size = len(view)
    while view:
        written = os.pwrite(descriptor, view, position)
        view, position = view[written:], position + written
    if progress is not None:
        progress(size)


def write_xtts_weights(
    plan: MergePlan,
    folder: Path,
    stats: DistanceStats,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Coqui's native layout: stream into a scratch safetensors file, then save `{"model", "config"}` from its memory
    map (so the merged weights are never held in anonymous memory) and delete the scratch file."""
    from hf_tts.convert.xtts import save_xtts_checkpoint

    scratch_folder = folder / ".merge-scratch"
    scratch_folder.mkdir()
    keys = [task.key for task in plan.tasks]
    (scratch,) = write_weight_shards(plan, scratch_folder, stats, [keys], workers, progress)
    mapped = MappedSafetensors(scratch)
    state_dict = {key: mapped.tensor(key) for key in sorted(mapped.infos())}
    target = folder / XTTS_WEIGHTS_NAME
    donor = plan.donor.native if plan.donor.kind == "xtts" else plan.sources[0].native
    save_xtts_checkpoint(target, state_dict, plan.donor.config, plan.sources[0].native.prefix, donor.trainer_entries)
    del state_dict, mapped
    shutil.rmtree(scratch_folder)
    return target


def copy_companion_files(plan: MergePlan, folder: Path) -> None:
    """Config (dtype updated when --dtype changed it), tokenizer / vocab, processor and generation settings (or the
    XTTS sidecar files) from the config donor; the plan checked that the sources agree on them. An upstream
    checkpoint donor gets the processor `hf-tts convert f5` would write, so the pipeline loads the merge as it is."""
    donor = plan.donor
    if plan.layout == "xtts":
        for name in XTTS_SIDECARS:
            if (donor.folder / name).is_file():
                shutil.copyfile(donor.folder / name, folder / name)
        return
    if donor.kind == "file":
        return  # a bare state dict: no config, tokenizer or processor to carry
    raw_config = donor.folder / "config.json" if donor.folder is not None else None
    config = json.loads(raw_config.read_text(encoding="utf-8")) if raw_config else dict(donor.config)
    if plan.recipe.dtype is not None:
        config["dtype"] = plan.recipe.dtype
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if donor.folder is None:
        from hf_tts.processing import F5FeatureExtractor, F5Processor
        from hf_tts.tokenization_f5 import F5Tokenizer

        tokenizer = F5Tokenizer(str(donor.vocab_files["vocab.txt"]), tokenizer_type=config["tokenizer_type"])
        extractor = F5FeatureExtractor(sampling_rate=config["sampling_rate"], hop_length=config["hop_length"])
        F5Processor(extractor, tokenizer).save_pretrained(folder)
        return
    for name in COMPANION_FILES:
        if (donor.folder / name).is_file():
            shutil.copyfile(donor.folder / name, folder / name)


def import_plotting() -> Any:
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def plot_distances(distances: dict[str, list[float]], labels: list[str], path: Path) -> None:
    """PNG line plot: one line per source, its cosine distance from the merge for each block."""
    pyplot = import_plotting()

    blocks = list(distances)
    # Room below the axes for the rotated block names (about 0.07 inch per character at font size 7).
    label_height = 0.07 * max((len(block) for block in blocks), default=0)
    figure, axes = pyplot.subplots(figsize=(max(6.0, 0.25 * len(blocks) + 2), 3.5 + label_height), dpi=100)
    for index, label in enumerate(labels):
        axes.plot(range(len(blocks)), [distances[block][index] for block in blocks], marker="o", label=label)
    axes.set_xticks(range(len(blocks)))
    axes.set_xticklabels(blocks, rotation=90, fontsize=7)
    axes.set_ylabel("cosine distance (1 - cos)")
    axes.set_title("How far each source is from the merged weights, per block")
    axes.legend(fontsize=8)
    figure.tight_layout()
    # No software/date metadata: the same merge gives the same bytes.
    figure.savefig(path, format="png", metadata={"Software": None})
    pyplot.close(figure)
