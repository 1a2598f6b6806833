"""Start-up times of `import hf_tts` and of `hf-tts --help` / `--version` / every `COMMAND --help`, each against
`python -c "import torch, transformers"` measured in the same run (ratios, so figures from loaded or different
machines compare).

    python scripts/bench_startup.py [--repeat 5]

Each figure is the median wall time of fresh interpreters, run alternately with the baseline (so a machine whose
load changes during the run still gives fair ratios; the baseline column is the one measured beside it). The target: every --help far below the baseline (it
imports neither torch nor transformers), and `import hf_tts` plus the registration it triggers at most 0.3 s above
`import torch, transformers`. The AutoModel rows compare `import hf_tts; from transformers import AutoModel` (the
registration's Auto-class part; the pipeline part waits for `transformers.pipelines`) with the same import without
hf_tts.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path


def run_once(argv: list[str]) -> float:
    """Wall time (s) of one fresh run of `argv` (output discarded; a failing run is an error)."""
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def timed_against(argv: list[str], baseline: list[str], repeat: int) -> tuple[float, float]:
    """(median of `argv`, median of `baseline`) over `repeat` alternating runs of each."""
    case_times, baseline_times = [], []
    for _ in range(repeat):
        case_times.append(run_once(argv))
        baseline_times.append(run_once(baseline))
    return statistics.median(case_times), statistics.median(baseline_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure (median; default 5)")
    args = parser.parse_args()

    from hf_tts.cli import COMMANDS

    python = sys.executable
    script = Path(python).with_name("hf-tts")
    cli = [str(script)] if script.exists() else [python, "-m", "hf_tts.cli"]
    baseline = [python, "-c", "import torch, transformers"]
    cases: list[tuple[str, list[str]]] = [
        ("import hf_tts", [python, "-c", "import hf_tts"]),
        ("import hf_tts, torch, transformers", [python, "-c", "import hf_tts, torch, transformers"]),
        (
            "import hf_tts, torch + AutoConfig.for_model (registers)",
            [
                python,
                "-c",
                "import hf_tts, torch; from transformers import AutoConfig; AutoConfig.for_model('hf_tts_f5')",
            ],
        ),
        (
            "import hf_tts, torch + AutoModel (Auto-class part)",
            [python, "-c", "import hf_tts, torch; from transformers import AutoModel"],
        ),
        (
            "import torch + AutoModel (no hf_tts)",
            [python, "-c", "import torch; from transformers import AutoModel"],
        ),
        (
            "import hf_tts, torch + AutoModel, pipeline (registers)",
            [python, "-c", "import hf_tts, torch; from transformers import AutoModel, pipeline"],
        ),
        (
            "import torch + AutoModel, pipeline (no hf_tts)",
            [python, "-c", "import torch; from transformers import AutoModel, pipeline"],
        ),
        ("hf-tts --help", [*cli, "--help"]),
        ("hf-tts --version", [*cli, "--version"]),
        *[(f"hf-tts {name} --help", [*cli, name, "--help"]) for name in COMMANDS],
        ("hf-tts convert f5 --help", [*cli, "convert", "f5", "--help"]),
        ("hf-tts hub serve --help", [*cli, "hub", "serve", "--help"]),
        ("hf-tts presets", [*cli, "presets"]),
    ]
    print(f"baseline: `python -c 'import torch, transformers'`, medians of {args.repeat} alternating runs")
    print(f"{'case':55s} {'seconds':>8s} {'baseline':>8s} {'x baseline':>10s} {'- baseline':>10s}")
    for label, argv in cases:
        seconds, base = timed_against(argv, baseline, args.repeat)
        print(f"{label:55s} {seconds:8.2f} {base:8.2f} {seconds / base:10.2f} {seconds - base:+10.2f}")


if __name__ == "__main__":
    main()
