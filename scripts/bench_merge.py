"""Benchmark `hf-tts merge` against the load-everything snippet and against copying the same bytes.

Builds 4 synthetic checkpoints with F5TTS_v1_Base's key names and shapes (fp32, about 1.35 GB each; `--quick` uses
a 2-layer model), written straight to safetensors folders. Each contender runs in its own subprocess; its peak RSS
comes from `os.wait4` (the kernel's max RSS of exactly that child) and its time from the phase it measures itself,
so interpreter start-up is reported separately. Prints the figures and the ratios against the baselines measured in
the same run, then deletes every file it made.

The card records every input's sha256. A first merge of local files hashes them beside the merge (a row times
that alone on one core); the merge remembers the hashes (`HF_TTS_CACHE`, here a folder of the run), so a second merge
of the same files, like merges of Hub downloads (whose blob names are their sha256), hashes nothing. Both are timed.
`--cold` evicts the inputs from the page cache before each contender (posix_fadvise, no root needed), so every
contender reads them from disk, as a first merge of downloaded checkpoints does. Contenders run in alternation for
`--rounds` rounds; times are medians, peak RSS the largest seen.

    python scripts/bench_merge.py [--quick] [--cold] [--rounds 3] [--sources 4] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Contenders: each prints one JSON line {"seconds": ...} for its own measured phase.
BARE = "import torch; print('{\"seconds\": 0.0}')"
MERGE = """
import json, sys, time
import matplotlib.pyplot  # start-up imports (reported in the wall time), not merge work
from hf_tts.cli import main
import hf_tts.merge.write
started = time.perf_counter()
code = main(["merge", *sys.argv[2:], "--out", sys.argv[1]])
assert code == 0, code
print(json.dumps({"seconds": time.perf_counter() - started}))
"""
NAIVE = """
import json, sys, time
import torch
from safetensors.torch import load_file, save_file
started = time.perf_counter()
checkpoints = [load_file(f"{path}/model.safetensors") for path in sys.argv[2:]]
weight = 1.0 / len(checkpoints)
merged = {key: sum(weight * checkpoint[key] for checkpoint in checkpoints) for key in checkpoints[0]}
save_file(merged, f"{sys.argv[1]}/model.safetensors")
print(json.dumps({"seconds": time.perf_counter() - started}))
"""
HASH = """
import json, sys, time
from hf_tts.file_utils import sha256_file
started = time.perf_counter()
for path in sys.argv[2:]:
    sha256_file(f"{path}/model.safetensors")
print(json.dumps({"seconds": time.perf_counter() - started}))
"""
COPY = """
import json, shutil, sys, time
started = time.perf_counter()
# Read every input byte (what a merge must read) and write one model's worth (what it writes).
for path in sys.argv[3:]:
    with open(f"{path}/model.safetensors", "rb") as handle:
        while handle.read(16 << 20):
            pass
shutil.copyfile(f"{sys.argv[2]}/model.safetensors", f"{sys.argv[1]}/model.safetensors")
print(json.dumps({"seconds": time.perf_counter() - started}))
"""


def build_checkpoints(workdir: Path, count: int, quick: bool) -> list[Path]:
    """Folders with config.json + model.safetensors of random fp32 tensors shaped like F5TTS_v1_Base."""
    import torch
    from safetensors.torch import save_file

    from hf_tts import F5TTSConfig, F5TTSModel

    config = F5TTSConfig.from_preset("F5TTS_v1_Base", **({"depth": 2} if quick else {}))
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        shapes = {key: tuple(value.shape) for key, value in F5TTSModel(config).state_dict().items()}
    folders = []
    for index in range(count):
        folder = workdir / f"source{index}"
        folder.mkdir()
        generator = torch.Generator().manual_seed(index)
        state = {key: torch.randn(shape, generator=generator) for key, shape in sorted(shapes.items())}
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
        del state
        config.save_pretrained(folder)
        folders.append(folder)
    return folders


def evict_from_page_cache(paths: list[Path]) -> None:
    """Drop the files' pages from the page cache (written back first), so the next reader gets them from disk."""
    for path in paths:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)


def run_contender(code: str, args: list[str], env: dict[str, str]) -> dict:
    """Run `code` in a fresh interpreter; return its own timing plus wall time and peak RSS (MiB) of that child."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    output = process.stdout.read()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"contender failed with exit code {process.returncode}: {output[-2000:]}")
    result = json.loads(output.strip().splitlines()[-1])
    return {"seconds": result["seconds"], "wall": wall, "peak_mib": usage.ru_maxrss / 1024}  # ru_maxrss is KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2-layer model instead of the full 22 layers")
    parser.add_argument(
        "--cold", action="store_true", help="evict the inputs from the page cache before each contender"
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of every contender (medians)")
    parser.add_argument("--sources", type=int, default=4)
    parser.add_argument("--workdir", help="where to put the synthetic checkpoints (default: a temp folder)")
    parser.add_argument("--build-into", help=argparse.SUPPRESS)  # internal: the checkpoint-building subprocess
    args = parser.parse_args()
    if args.build_into:
        build_checkpoints(Path(args.build_into), args.sources, args.quick)
        return
    workdir = Path(tempfile.mkdtemp(prefix="bench_merge_", dir=args.workdir))
    try:
        # Built in a child: this process stays small (no torch import), because a child's max RSS starts with the
        # pages it shares with its parent between fork and exec.
        command = [sys.executable, __file__, "--build-into", str(workdir), "--sources", str(args.sources)]
        subprocess.run(command + (["--quick"] if args.quick else []), check=True)
        folders = [workdir / f"source{index}" for index in range(args.sources)]
        sources = [str(folder) for folder in folders]
        input_files = [folder / "model.safetensors" for folder in folders]
        input_bytes = sum(path.stat().st_size for path in input_files)
        cache = "evicted from the page cache before each contender" if args.cold else "in the page cache"
        print(f"{args.sources} checkpoints of {input_bytes / args.sources / 1e9:.2f} GB each in {workdir} ({cache})")
        hash_cache = workdir / "hash-cache"
        env = {**os.environ, "HF_TTS_CACHE": str(hash_cache)}
        contenders = (
            ("bare (import torch)", BARE),
            ("copy same bytes", COPY),
            ("sha256 of the inputs", HASH),
            ("hf-tts merge, first", MERGE),
            ("hf-tts merge, again", MERGE),
            ("load-everything snippet", NAIVE),
        )
        runs: dict[str, list[dict]] = {name: [] for name, _ in contenders}
        for _ in range(args.rounds):
            shutil.rmtree(hash_cache, ignore_errors=True)  # the first merge of each round hashes every input
            for name, code in contenders:
                out = workdir / "out"
                if code is not MERGE:
                    out.mkdir()
                if args.cold:
                    evict_from_page_cache(input_files)
                extra = [sources[0], *sources] if code is COPY else sources
                runs[name].append(run_contender(code, [str(out), *extra], env))
                shutil.rmtree(out, ignore_errors=True)
                if name.endswith("first") and not any(hash_cache.glob("*/*.json")):
                    print("warning: the first merge remembered no hash (inputs modified within the last 2 s?)")
        results = {
            name: {
                "seconds": statistics.median(run["seconds"] for run in named),
                "wall": statistics.median(run["wall"] for run in named),
                "peak_mib": max(run["peak_mib"] for run in named),
            }
            for name, named in runs.items()
        }
        bare = results["bare (import torch)"]["peak_mib"]
        print(f"\n{'contender':<26}{'peak RSS MiB':>14}{'above bare':>12}{'phase s':>10}{'MB/s':>10}{'wall s':>9}")
        for name, result in results.items():
            rate = input_bytes / 1e6 / result["seconds"] if result["seconds"] else float("nan")
            print(
                f"{name:<26}{result['peak_mib']:>14.0f}{result['peak_mib'] - bare:>12.0f}{result['seconds']:>10.2f}"
                f"{rate:>10.0f}{result['wall']:>9.2f}"
            )
        first, again = results["hf-tts merge, first"], results["hf-tts merge, again"]
        naive, copy = results["load-everything snippet"], results["copy same bytes"]
        hashing = results["sha256 of the inputs"]
        merge_peak = max(first["peak_mib"], again["peak_mib"]) - bare
        print(
            f"\nmerge peak RSS above bare: {merge_peak / 1024:.2f} GiB (target <= 0.5)"
            f"\nsnippet / merge peak RSS above bare: {(naive['peak_mib'] - bare) / max(merge_peak, 1):.1f}x"
            f"\nmerge time / copy time, input hashes known: {again['seconds'] / copy['seconds']:.2f}x (target <= 1.5)"
            f"\nmerge time / copy time, first merge (hashing every input): {first['seconds'] / copy['seconds']:.2f}x"
            f"\nmerge time / snippet time: {again['seconds'] / naive['seconds']:.2f}x (first merge:"
            f" {first['seconds'] / naive['seconds']:.2f}x)"
            f"\nsha256 time (one core) / copy time: {hashing['seconds'] / copy['seconds']:.2f}x"
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
