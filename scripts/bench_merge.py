"""Benchmark `hf-tts merge`: against mergekit (default) or against the load-everything snippet and a copy.

Against mergekit: mergekit 0.1.5 is installed into its own virtualenv (created on first use, like bench_tts.py does
for upstream: `torch==2.13.0` first, the CPU wheel this project pins, then mergekit; default
~/.cache/hf_tts/mergekit-venv). Three random F5TTS_v1_Base-shaped folders (fp32, 1.35 GB each; `--quick`: 2 layers)
are the inputs of every method both tools have: two sources and a base for the task-vector methods, model_stock,
sce; all three for linear, multislerp and karcher; two for slerp and nuslerp; one source and the base for nearswap.
Each run is a child process: time is its wall time (interpreter start-up included for both), memory its peak
anonymous RSS (RssAnon sampled every 10 ms; memory-mapped input pages are file-backed and not counted). With
`--rounds N` both tools run N times per method, alternating; times are medians (this machine's speed drifts by a
third between minutes), memory the largest peak. Prints the figures, hf-tts / mergekit ratios and, for deterministic methods, the largest difference between the two outputs.

    python scripts/bench_merge.py [--quick] [--methods linear,ties,...] [--rounds N] [--workdir DIR] [--venv DIR]
    python scripts/bench_merge.py --against-snippet [--quick] [--cold] [--rounds 3] [--sources 4]

Against the snippet (`--against-snippet`, the original benchmark):
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

"""

from __future__ import annotations

import argparse
import json
import math
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


def snippet_main(argv: list[str]) -> None:
    """The comparison against the load-everything snippet and a plain copy (`--against-snippet`)."""
    parser = argparse.ArgumentParser(description="hf-tts merge against the load-everything snippet and a copy")
    parser.add_argument("--quick", action="store_true", help="2-layer model instead of the full 22 layers")
    parser.add_argument(
        "--cold", action="store_true", help="evict the inputs from the page cache before each contender"
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of every contender (medians)")
    parser.add_argument("--sources", type=int, default=4)
    parser.add_argument("--workdir", help="where to put the synthetic checkpoints (default: a temp folder)")
    parser.add_argument("--build-into", help=argparse.SUPPRESS)  # internal: the checkpoint-building subprocess
    args = parser.parse_args(argv)
    if args.build_into:
        build_checkpoints(Path(args.build_into), args.sources, args.quick)
        return
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench_merge_", dir=args.workdir))
    try:
        # Built in a child: this process stays small (no torch import), because a child's max RSS starts with the
        # pages it shares with its parent between fork and exec.
        command = [sys.executable, __file__, "--against-snippet", "--build-into", str(workdir)]
        command += ["--sources", str(args.sources)]
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


MERGEKIT_VERSION = "0.1.5"
DEFAULT_VENV = Path.home() / ".cache" / "hf_tts" / "mergekit-venv"
# method -> (sources used, uses the base, hf-tts options, mergekit global parameters, mergekit per-model parameters)
SHARED_METHODS: dict[str, tuple[int, bool, list[str], dict, dict]] = {
    "linear": (3, False, [], {}, {"weight": 1.0}),
    "slerp": (2, False, [], {"t": 0.5}, {}),
    "nuslerp": (2, False, [], {}, {"weight": 1.0}),
    "multislerp": (3, False, [], {}, {"weight": 1.0}),
    "karcher": (3, False, [], {}, {}),
    "task_arithmetic": (2, True, [], {}, {"weight": 1.0}),
    "ties": (2, True, ["--density", "0.5"], {}, {"weight": 1.0, "density": 0.5}),
    "dare_linear": (2, True, ["--density", "0.5", "--seed", "1"], {}, {"weight": 1.0, "density": 0.5}),
    "dare_ties": (2, True, ["--density", "0.5", "--seed", "1"], {}, {"weight": 1.0, "density": 0.5}),
    "breadcrumbs": (2, True, ["--density", "0.5"], {}, {"weight": 1.0, "density": 0.5}),
    "breadcrumbs_ties": (2, True, ["--density", "0.5"], {}, {"weight": 1.0, "density": 0.5}),
    "della": (2, True, ["--density", "0.5", "--seed", "1"], {}, {"weight": 1.0, "density": 0.5}),
    "della_linear": (2, True, ["--density", "0.5", "--seed", "1"], {}, {"weight": 1.0, "density": 0.5}),
    "model_stock": (2, True, [], {}, {}),
    "sce": (2, True, ["--select-topk", "0.5"], {"select_topk": 0.5}, {}),
    "nearswap": (1, True, ["--t", "0.001"], {"t": 0.001}, {}),
}
RANDOM_METHODS = ("dare_linear", "dare_ties", "della", "della_linear")
HF_TTS_MERGE = """
import sys
from hf_tts.cli import run
sys.argv[1:1] = ["merge"]
run()  # what the `hf-tts` program runs
"""
MAX_DIFFERENCE = """
import json, sys
from pathlib import Path
import torch
from safetensors import safe_open
def tensors(folder):
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(path, "pt") as handle:
            for key in handle.keys():
                yield key, path
ours = dict(tensors(sys.argv[1]))
theirs = dict(tensors(sys.argv[2]))
worst, worst_key, beyond = 0.0, None, 0
for key, path in ours.items():
    with safe_open(path, "pt") as a, safe_open(theirs[key], "pt") as b:
        x, y = a.get_tensor(key), b.get_tensor(key)
        if x.is_floating_point() and x.numel():
            differences = (x.double() - y.double()).abs()
            beyond += int((differences > 1e-5).sum())  # TIES-family: entries tied exactly on a pruning threshold
            if float(differences.max()) > worst:
                worst, worst_key = float(differences.max()), key
missing = sorted(set(ours) ^ set(theirs))[:3]
print(json.dumps({"max_abs_difference": worst, "key": worst_key, "beyond": beyond, "missing": missing}))
"""


def ensure_mergekit_venv(venv: Path) -> Path:
    """The mergekit virtualenv's python, creating it on first use (torch==2.13.0 first: any other torch spec would
    pull gigabytes of CUDA wheels)."""
    python = venv / "bin" / "python"
    check = [
        str(python),
        "-c",
        f"import mergekit, importlib.metadata as m; assert m.version('mergekit') == '{MERGEKIT_VERSION}'",
    ]
    if python.is_file() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"installing mergekit {MERGEKIT_VERSION} into {venv} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, f"mergekit=={MERGEKIT_VERSION}"], check=True)
    return python


def _anonymous_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def run_measured(command: list[str], allow_failure: bool = False) -> dict:
    """Run `command`; its wall time and peak anonymous RSS (MiB), sampled every 10 ms."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0
    while process.poll() is None:
        peak = max(peak, _anonymous_kib(process.pid))
        time.sleep(0.01)
    seconds = time.perf_counter() - started
    output = process.stdout.read()
    if process.returncode != 0:
        if not allow_failure:
            raise SystemExit(f"{command[:3]} failed with exit code {process.returncode}: {output[-3000:]}")
        return {"seconds": math.nan, "anon_mib": math.nan, "error": output.strip().splitlines()[-1][:160]}
    return {"seconds": seconds, "anon_mib": peak / 1024}


def median_run(runs: list[dict]) -> dict:
    """The median time and the largest peak memory of repeated runs (the first failure, if one failed)."""
    failed = [run for run in runs if "error" in run]
    if failed:
        return failed[0]
    return {"seconds": statistics.median(run["seconds"] for run in runs), "anon_mib": max(r["anon_mib"] for r in runs)}


def mergekit_config(method: str, sources: list[str], base: str | None, parameters: dict, per_model: dict) -> str:
    import json as json_module

    models = [{"model": source, **({"parameters": per_model} if per_model else {})} for source in sources]
    if method == "slerp":  # mergekit's SLERP runs from the base (t=0) to the one other model
        models, base = models[1:], sources[0]
    document = {"merge_method": method, "models": models, "dtype": "float32", "out_dtype": "float32"}
    if base is not None:
        document["base_model"] = base
    if parameters:
        document["parameters"] = parameters
    return json_module.dumps(document)  # JSON is YAML


def mergekit_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description="hf-tts merge against mergekit, every shared method")
    parser.add_argument("--quick", action="store_true", help="2-layer model instead of the full 22 layers")
    parser.add_argument("--methods", help="comma-separated subset of the shared methods")
    parser.add_argument("--workdir", help="where to put the synthetic checkpoints (default: a temp folder)")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="mergekit virtualenv (created if missing)")
    parser.add_argument("--rounds", type=int, default=1, help="alternating runs of both tools per method (medians)")
    args = parser.parse_args(argv)
    names = args.methods.split(",") if args.methods else list(SHARED_METHODS)
    unknown = [name for name in names if name not in SHARED_METHODS]
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; shared methods: {', '.join(SHARED_METHODS)}")
    mergekit_python = ensure_mergekit_venv(args.venv)
    mergekit_cli = str(args.venv / "bin" / "mergekit-pytorch")
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench_merge_", dir=args.workdir))
    try:
        command = [sys.executable, __file__, "--against-snippet", "--build-into", str(workdir), "--sources", "3"]
        subprocess.run(command + (["--quick"] if args.quick else []), check=True)
        folders = [workdir / f"source{index}" for index in range(3)]
        files = [str(folder / "model.safetensors") for folder in folders]
        size = (folders[0] / "model.safetensors").stat().st_size
        print(
            f"3 checkpoints of {size / 1e9:.2f} GB each in {workdir}; mergekit {MERGEKIT_VERSION} ({mergekit_python})"
        )
        os.sync()  # the new checkpoints' write-back would otherwise slow whichever runs first
        idle = run_measured([sys.executable, "-c", "import torch, time; time.sleep(0.5)"])["anon_mib"]
        env_cache = {"HF_TTS_CACHE": str(workdir / "hash-cache")}
        os.environ.update(env_cache)
        print(f"\nidle (python + torch imported): {idle:.0f} MiB anonymous")
        # The card's input hashes are computed once and remembered (as for a second merge of the same files, or any
        # merge of Hub downloads); hashing them here keeps that one-time cost out of the first method's figure.
        time.sleep(2.1)  # the hash cache ignores files modified within the last 2 s
        prehash = (
            "import sys; from hf_tts.file_utils import sha256_file; [sha256_file(p, cache=True) for p in sys.argv[1:]]"
        )
        subprocess.run([sys.executable, "-c", prehash, *files], check=True)
        header = f"{'method':<18}{'hf-tts s':>10}{'mergekit s':>12}{'time x':>8}{'hf-tts MiB':>12}{'mergekit MiB':>14}{'mem x':>7} {'max |diff|':>12}"
        print(header)
        rows = []
        failures: list[str] = []
        worst_keys: list[str] = []
        for method in names:
            count, with_base, options, parameters, per_model = SHARED_METHODS[method]
            ours_out, theirs_out = workdir / "ours", workdir / "theirs"
            sources = [str(folder) for folder in folders[:count]]
            base = [str(folders[2])] if with_base else []
            config = workdir / "mergekit.yml"
            config.write_text(
                mergekit_config(method, files[:count], files[2] if with_base else None, parameters, per_model)
            )
            ours_runs, theirs_runs = [], []
            for _ in range(args.rounds):  # alternating, so a slow spell of the machine hits both
                shutil.rmtree(ours_out, ignore_errors=True)
                shutil.rmtree(theirs_out, ignore_errors=True)
                ours_runs.append(run_measured(
                    [sys.executable, "-c", HF_TTS_MERGE, *sources, *(["--base", *base] if base else []), "--method",
                     method, *options, "--out", str(ours_out)]
                ))  # fmt: skip
                theirs_runs.append(run_measured([mergekit_cli, str(config), str(theirs_out)], allow_failure=True))
            ours, theirs = median_run(ours_runs), median_run(theirs_runs)
            difference = "random"
            if "error" in theirs:
                difference = "mergekit failed"
                failures.append(f"{method}: {theirs['error']}")
            elif method not in RANDOM_METHODS:
                result = subprocess.run(
                    [sys.executable, "-c", MAX_DIFFERENCE, str(ours_out), str(theirs_out)],
                    check=True, capture_output=True, text=True,
                )  # fmt: skip
                compared = json.loads(result.stdout.strip().splitlines()[-1])
                difference = f"{compared['max_abs_difference']:.1e}" + (" keys!" if compared["missing"] else "")
                if compared["max_abs_difference"] > 1e-6:
                    worst_keys.append(f"{method}: {compared['key']} ({compared['beyond']} entries differ by > 1e-5)")
            shutil.rmtree(ours_out)
            shutil.rmtree(theirs_out, ignore_errors=True)
            time_ratio = ours["seconds"] / theirs["seconds"]
            memory_ratio = max(ours["anon_mib"] - idle, 1) / max(theirs["anon_mib"] - idle, 1)
            rows.append((method, time_ratio, memory_ratio, ours["anon_mib"] - idle))
            print(
                f"{method:<18}{ours['seconds']:>10.2f}{theirs['seconds']:>12.2f}{time_ratio:>8.2f}"
                f"{ours['anon_mib']:>12.0f}{theirs['anon_mib']:>14.0f}{memory_ratio:>7.2f} {difference:>12}",
                flush=True,
            )
        print(
            "\ntime x: hf-tts / mergekit wall time (target <= 0.5); mem x: hf-tts / mergekit peak anonymous RSS above "
            "idle (target <= 0.33); max |diff|: largest elementwise difference of the outputs (deterministic methods)"
        )
        for failure in failures:
            print(f"mergekit failed on {failure}")
        for worst in worst_keys:
            print(f"largest difference above 1e-6 at {worst}")
        completed = [row for row in rows if math.isfinite(row[1])]  # not the methods mergekit failed on
        missed = [row[0] for row in completed if not (row[1] <= 0.5 and row[2] <= 1 / 3)]
        over = [row[0] for row in rows if row[3] > 512]
        print(f"targets missed: {', '.join(missed) or 'none'}; above 0.5 GB over idle: {', '.join(over) or 'none'}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    if "--against-snippet" in sys.argv[1:]:
        snippet_main([arg for arg in sys.argv[1:] if arg != "--against-snippet"])
    else:
        mergekit_main(sys.argv[1:])


if __name__ == "__main__":
    main()
