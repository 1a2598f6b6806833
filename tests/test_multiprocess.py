"""Several processes on CPU (gloo): `accelerate launch --multi_gpu --num_processes 2` (on a machine without GPUs
accelerate runs the processes on the CPU) for `hf-tts synthesize --batch` (rows split by rank, each written once)
and `hf-tts finetune` (world size 2, each rank on its share of every batch, output / checkpoints / EMA written
once by rank 0, resume)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile
import yaml
from speech_fixtures import f5_dir, reference_wave

from tests.training_utils import make_model_folder, write_metadata_folder

ACCELERATE = Path(sys.executable).parent / "accelerate"
LAUNCH = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
LAUNCH += ["--mixed_precision", "no", "--dynamo_backend", "no", "-m", "hf_tts.cli"]


def launch(arguments: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run(
        [*LAUNCH, *map(str, arguments)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.skipif(not ACCELERATE.exists(), reason="accelerate's launcher is not installed")
def test_batch_rows_split_by_rank_each_written_once(tmp_path):
    soundfile.write(tmp_path / "voice.wav", reference_wave(), 24000)
    rows = [{"id": f"r{index}", "text": f"Sentence number {index}."} for index in range(5)]
    (tmp_path / "jobs.jsonl").write_text("\n".join(json.dumps(row) for row in rows), encoding="utf-8")
    arguments = ["synthesize", f5_dir(), "--batch", "jobs.jsonl", "--out-dir", "out", "--ref-audio", "voice.wav"]
    arguments += ["--ref-text", "Some reference words", "--nfe-step", "2", "--seed", "0"]
    done = launch(arguments, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [f"r{index}.wav" for index in range(5)]
    # rank 0 did rows 0, 2, 4 and rank 1 rows 1, 3: every row once
    assert "rank 0 of 2: wrote 3 rows" in done.stdout and "rank 1 of 2: wrote 2 rows" in done.stdout
    again = launch(arguments, tmp_path)  # resume: nothing left to do
    assert again.returncode == 0 and "skipped 3 already written" in again.stdout and "skipped 2" in again.stdout


@pytest.mark.skipif(not ACCELERATE.exists(), reason="accelerate's launcher is not installed")
def test_finetune_on_two_processes_writes_once_and_resumes(tmp_path):
    base = make_model_folder(tmp_path / "base")
    data = write_metadata_folder(tmp_path / "data", count=4)
    common = ["finetune", "--model", base, "--data", data, "--out", "out", "--save-steps", "1", "--lr", "2e-3"]
    common += ["--batch-frames", "300", "--ema-update-after-step", "1", "--ema-update-every", "1"]
    common += ["--logging-steps", "1", "--cpu"]
    done = launch([*common, "--max-steps", "2"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained 2 steps on 4 rows on 2 processes") == 2  # both ranks report, one writes
    out = tmp_path / "out"
    assert {"model.safetensors", "model.online.safetensors", "processor_config.json", "README.md"} <= {
        path.name for path in out.iterdir()
    }
    front = yaml.safe_load((out / "README.md").read_text().split("---")[1])
    assert front["base_model"] == "base" and front["base_model_relation"] == "finetune"
    checkpoints = tmp_path / "out.checkpoints"
    assert sorted(path.name for path in checkpoints.iterdir()) == ["checkpoint-1", "checkpoint-2"]
    assert (checkpoints / "checkpoint-2" / "ema.safetensors").is_file()
    state = json.loads((checkpoints / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert not list(tmp_path.glob("*.staging*")) and not list(tmp_path.glob(".*out*"))

    resumed = launch([*common, "--max-steps", "3", "--resume", "--overwrite"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "trained 3 steps" in resumed.stdout
    log = json.loads((out / "training_log.json").read_text())
    assert [entry["step"] for entry in log if "loss" in entry] == [1, 2, 3]  # steps 1-2 from the checkpoint
