"""Upstream F5-TTS (PyPI `f5-tts`) worker for `scripts/bench_tts.py`, run by the benchmark virtualenv's python.

It is never imported by `hf_tts`: the two implementations never share a process. The worker reads `request.json`
and `inputs.safetensors` from the folder named on the command line, builds upstream's `CFM(DiT)`, loads the
released-layout checkpoint there exactly as upstream's `load_checkpoint(use_ema=True)` does, prints one `ready` line
and then serves one job per line of standard input, answering each with one JSON line of timings (or of the error
it raised). The benchmark interleaves these jobs with its own runs, so both see the same machine load.

Jobs (`CFM.sample` always gets the mel prompt, so upstream's torchaudio-only mel path is never reached):
- `single`: one utterance; `longform_sequential`: the chunks one after another (upstream's streaming path);
  `longform_threaded`: the chunks submitted to a `ThreadPoolExecutor`, as upstream's default `infer_batch_process`.
  With `"save": true` the mels are written to `outputs.safetensors` (`single`, `chunk_0`, `chunk_1`, ...), as fp32.
  `"dtype": "bfloat16"` runs the job on a bf16 copy of the model, cast as `load_checkpoint(dtype=...)` casts it.
"""

import argparse
import json
import sys
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def _stub_training_only_imports() -> None:
    """Registers empty modules for packages that `f5_tts.model` imports at import time but sampling never calls.

    `f5_tts/model/__init__.py` eagerly imports the trainer and dataset code (wandb, accelerate, datasets,
    torchaudio) and `modules.py` imports torchaudio and librosa for the waveform mel front end, which a mel prompt
    bypasses. torchaudio has no wheel for this torch and the rest are large, so they are stubbed here only.
    """
    stubs = {
        "torchaudio": {},
        "torchaudio.transforms": {},
        "librosa": {},
        "librosa.filters": {"mel": None},
        "wandb": {},
        "accelerate": {"Accelerator": object},
        "accelerate.utils": {"DistributedDataParallelKwargs": object},
        "datasets": {"Dataset": object, "load_from_disk": None},
    }
    for name, attributes in stubs.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        sys.modules.setdefault(name, module)
    sys.modules["torchaudio"].transforms = sys.modules["torchaudio.transforms"]
    sys.modules["librosa"].filters = sys.modules["librosa.filters"]
    sys.modules["accelerate"].utils = sys.modules["accelerate.utils"]


def build_upstream_model(arch: dict, checkpoint: Path) -> torch.nn.Module:
    _stub_training_only_imports()
    from f5_tts.model.backbones.dit import DiT
    from f5_tts.model.cfm import CFM

    model = CFM(transformer=DiT(**arch), mel_spec_kwargs={"n_mel_channels": arch["mel_dim"]})
    state = load_file(str(checkpoint))
    state = {k.replace("ema_model.", ""): v for k, v in state.items() if k not in ("initted", "step")}
    model.load_state_dict(state, strict=True)
    return model.eval().float()


class UpstreamWorker:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        request = json.loads((workdir / "request.json").read_text())
        torch.set_num_threads(request["num_threads"])
        self.settings = request["settings"]
        inputs = load_file(str(workdir / "inputs.safetensors"))
        self.cond = inputs["ref_mel"]
        self.single = (inputs["single_text"], request["single_duration"])
        self.chunks = [(inputs[f"chunk_text_{i}"], d) for i, d in enumerate(request["chunk_durations"])]
        self.arch = request["arch"]
        self.models = {"float32": build_upstream_model(self.arch, workdir / "model_ema.safetensors")}
        self.model = self.models["float32"]

    def use_dtype(self, dtype: str) -> None:
        if dtype not in self.models:
            model = build_upstream_model(self.arch, self.workdir / "model_ema.safetensors")
            self.models[dtype] = model.to(getattr(torch, dtype))
        self.model = self.models[dtype]

    def sample(self, text: torch.Tensor, duration: int, steps: int | None = None) -> torch.Tensor:
        out, _ = self.model.sample(
            cond=self.cond,
            text=text,
            duration=duration,
            steps=steps or self.settings["steps"],
            cfg_strength=self.settings["cfg_strength"],
            sway_sampling_coef=self.settings["sway_sampling_coef"],
            seed=self.settings["seed"],
        )
        return out

    def sample_threaded(self) -> list[torch.Tensor]:
        with ThreadPoolExecutor() as executor:
            futures = [executor.submit(self.sample, text, duration) for text, duration in self.chunks]
            return [future.result() for future in futures]

    def run(self, job: str) -> tuple[dict[str, torch.Tensor], float]:
        start = time.perf_counter()
        if job == "warmup":
            outputs = {"single": self.sample(*self.single, steps=2)}
        elif job == "single":
            outputs = {"single": self.sample(*self.single)}
        elif job == "longform_sequential":
            outputs = {f"chunk_{i}": self.sample(*chunk) for i, chunk in enumerate(self.chunks)}
        elif job == "longform_threaded":
            outputs = {f"chunk_{i}": out for i, out in enumerate(self.sample_threaded())}
        else:
            raise ValueError(f"unknown job {job!r}")
        return outputs, time.perf_counter() - start

    def serve(self) -> None:
        print(json.dumps({"ready": True}), flush=True)
        with torch.inference_mode():
            for line in sys.stdin:
                command = json.loads(line)
                try:
                    self.use_dtype(command.get("dtype", "float32"))
                    outputs, seconds = self.run(command["job"])
                except Exception as error:  # reported to the benchmark, which decides; the worker keeps serving
                    print(json.dumps({"job": command["job"], "error": f"{type(error).__name__}: {error}"}), flush=True)
                    continue
                if command.get("save"):
                    save_file(
                        {k: v.float().contiguous() for k, v in outputs.items()},
                        str(self.workdir / "outputs.safetensors"),
                    )
                print(json.dumps({"job": command["job"], "seconds": seconds}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path, help="folder holding request.json, inputs.safetensors and the checkpoint")
    UpstreamWorker(parser.parse_args().workdir).serve()


if __name__ == "__main__":
    main()
