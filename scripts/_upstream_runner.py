"""Upstream F5-TTS (PyPI `f5-tts`) worker for `scripts/bench_tts.py`, run by the benchmark virtualenv's python.

It is never imported by `hf_tts`: the two implementations never share a process. The worker reads `request.json`
and `inputs.safetensors` from the folder named on the command line, builds upstream's `CFM(DiT)`, loads the
released-layout checkpoint there exactly as upstream's `load_checkpoint(use_ema=True)` does, prints one `ready` line
and then serves one job per line of standard input, answering each with one JSON line of timings (or of the error
it raised). The benchmark interleaves these jobs with its own runs, so both see the same machine load.

Jobs (the sampling jobs give `CFM.sample` the mel prompt and token ids; `stream` goes through upstream's own text and
waveform front end):
- `single`: one utterance; `longform_sequential`: the chunks one after another (upstream's streaming path);
  `longform_threaded`: the chunks submitted to a `ThreadPoolExecutor`, as upstream's default `infer_batch_process`.
  With `"save": true` the mels are written to `outputs.safetensors` (`single`, `chunk_0`, `chunk_1`, ...), as fp32.
  `"dtype": "bfloat16"` runs the job on a bf16 copy of the model, cast as `load_checkpoint(dtype=...)` casts it.
- `stream`: upstream's `infer_batch_process(..., streaming=True)` on the reference wave `stream_ref_wave` and the
  job's `ref_text` and `chunks`, end to end (mel of the reference, sampling, Vocos decoding): the reply adds
  `first_seconds` (time to its first yield) and `samples`; `save` writes the first yield as `first`. The global
  seed is set first, so the first chunk's noise is `manual_seed(seed)`'s, as with `sample(seed=...)`.

The Vocos vocoder is upstream's own (`vocos` package, `Vocos.from_hparams` on the `vocos/config.yaml` the benchmark
writes, random weights drawn from the seed); the worker saves its weights as `vocos/pytorch_model.bin` before the
`ready` line, so the benchmark loads the very same vocoder into hf_tts.
"""

import argparse
import json
import math
import sys
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class _MelSpectrogram(torch.nn.Module):
    """`torchaudio.transforms.MelSpectrogram` for the arguments upstream's `MelSpec` and Vocos' feature extractor
    pass (magnitude, Hann window, reflect padding, HTK filterbank without norm), in torchaudio's own arithmetic and
    with its buffer names (`spectrogram.window`, `mel_scale.fb`), so a saved Vocos state dict has the usual keys."""

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 400,
        win_length: int | None = None,
        hop_length: int | None = None,
        n_mels: int = 128,
        power: float = 2.0,
        center: bool = True,
        normalized: bool = False,
        norm: str | None = None,
        pad_mode: str = "reflect",
    ):
        super().__init__()
        if power != 1 or normalized or norm is not None:
            raise NotImplementedError("the torchaudio stand-in implements power=1, normalized=False, norm=None only")
        self.n_fft, self.win_length = n_fft, win_length or n_fft
        self.hop_length = hop_length or self.win_length // 2
        self.center, self.pad_mode = center, pad_mode
        self.spectrogram = torch.nn.Module()
        self.spectrogram.register_buffer("window", torch.hann_window(self.win_length))
        self.mel_scale = torch.nn.Module()
        self.mel_scale.register_buffer("fb", self._filterbank(n_fft // 2 + 1, sample_rate, n_mels))

    @staticmethod
    def _filterbank(n_freqs: int, sample_rate: int, n_mels: int) -> torch.Tensor:
        """torchaudio's `melscale_fbanks(f_min=0, f_max=sample_rate // 2, norm=None, mel_scale="htk")`."""
        all_freqs = torch.linspace(0, sample_rate // 2, n_freqs)
        m_max = 2595.0 * math.log10(1.0 + (sample_rate // 2) / 700.0)
        f_pts = 700.0 * (10 ** (torch.linspace(0.0, m_max, n_mels + 2) / 2595.0) - 1.0)
        f_diff = f_pts[1:] - f_pts[:-1]
        slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)
        down_slopes = (-1.0 * slopes[:, :-2]) / f_diff[:-1]
        up_slopes = slopes[:, 2:] / f_diff[1:]
        return torch.max(torch.zeros(1), torch.min(down_slopes, up_slopes))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        shape = wave.shape
        spec = torch.stft(
            wave.reshape(-1, shape[-1]),
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.spectrogram.window,
            center=self.center,
            pad_mode=self.pad_mode,
            normalized=False,
            onesided=True,
            return_complex=True,
        ).abs()
        spec = spec.reshape(shape[:-1] + spec.shape[-2:])
        return torch.matmul(spec.transpose(-1, -2), self.mel_scale.fb).transpose(-1, -2)


def _stub_training_only_imports() -> None:
    """Registers stand-ins for packages that upstream imports at import time but the benchmarked paths never call.

    `f5_tts/model/__init__.py` eagerly imports the trainer and dataset code (wandb, accelerate, datasets,
    torchaudio), `modules.py` imports torchaudio and librosa for the waveform mel front end, `infer/utils_infer.py`
    imports matplotlib, pydub and transformers (plots, silence trimming, ASR) and Vocos imports torchaudio.
    torchaudio has no wheel for this torch and the rest are large, so they are stubbed here only (the benchmark
    venv does not install them). The one torchaudio class the measured paths run, `MelSpectrogram` (upstream's mel
    of the reference wave, Vocos' feature extractor), is `_MelSpectrogram`; the benchmark checks its output through
    the agreement of the streamed audio with hf_tts'.
    """
    stubs = {
        "torchaudio": {},
        "torchaudio.transforms": {"MelSpectrogram": _MelSpectrogram},
        "torchaudio.functional": {},
        "torchaudio.functional.functional": {"_hz_to_mel": None, "_mel_to_hz": None},  # Vocos' IMDCT head only
        "librosa": {},
        "librosa.filters": {"mel": None},
        "wandb": {},
        "accelerate": {"Accelerator": object},
        "accelerate.utils": {"DistributedDataParallelKwargs": object},
        "datasets": {"Dataset": object, "load_from_disk": None},
        "matplotlib": {"use": lambda backend: None},
        "matplotlib.pylab": {},
        "pydub": {"AudioSegment": object, "silence": None},
        "transformers": {"pipeline": None},
    }
    for name, attributes in stubs.items():
        module = types.ModuleType(name)
        module.__path__ = []  # a package, so that `from torchaudio.functional.functional import ...` resolves
        module.__dict__.update(attributes)
        sys.modules.setdefault(name, module)
    for parent, child in (
        ("torchaudio", "transforms"),
        ("torchaudio", "functional"),
        ("torchaudio.functional", "functional"),
        ("librosa", "filters"),
        ("accelerate", "utils"),
        ("matplotlib", "pylab"),
    ):
        setattr(sys.modules[parent], child, sys.modules[f"{parent}.{child}"])


def build_upstream_model(arch: dict, checkpoint: Path, vocab: Path | None = None) -> torch.nn.Module:
    """Upstream's `CFM(DiT)` with the released-layout checkpoint, as `load_model` + `load_checkpoint(use_ema=True)`
    build it (with `vocab`, its character map from `get_tokenizer(vocab, "custom")`, for text given as strings)."""
    _stub_training_only_imports()
    from f5_tts.model.backbones.dit import DiT
    from f5_tts.model.cfm import CFM
    from f5_tts.model.utils import get_tokenizer

    vocab_char_map = get_tokenizer(str(vocab), "custom")[0] if vocab is not None else None
    model = CFM(
        transformer=DiT(**arch), mel_spec_kwargs={"n_mel_channels": arch["mel_dim"]}, vocab_char_map=vocab_char_map
    )
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
        self.stream_ref_wave = inputs.get("stream_ref_wave")
        self.arch = request["arch"]
        self.models = {"float32": self._build()}
        self.model = self.models["float32"]
        self.vocoder = self._build_vocoder(workdir / "vocos", request["settings"]["seed"])

    def _build(self) -> torch.nn.Module:
        return build_upstream_model(self.arch, self.workdir / "model_ema.safetensors", self.workdir / "vocab.txt")

    @staticmethod
    def _build_vocoder(folder: Path, seed: int) -> torch.nn.Module:
        """Upstream's Vocos from `folder/config.yaml` with seeded random weights, saved to `folder/pytorch_model.bin`
        (the released file's layout) for the benchmark to load into hf_tts."""
        from vocos import Vocos

        torch.manual_seed(seed)
        vocoder = Vocos.from_hparams(str(folder / "config.yaml")).eval()
        torch.save(vocoder.state_dict(), folder / "pytorch_model.bin")
        return vocoder

    def use_dtype(self, dtype: str) -> None:
        if dtype not in self.models:
            model = self._build()
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

    def stream(self, ref_text: str, chunks: list[str]) -> tuple[dict[str, torch.Tensor], dict]:
        """Upstream's streaming path on `chunks`: the first yield (and the seconds to it), the whole stream's."""
        from f5_tts.infer.utils_infer import infer_batch_process

        torch.manual_seed(self.settings["seed"])
        start = time.perf_counter()
        pieces = infer_batch_process(
            (self.stream_ref_wave[None], 24000),
            ref_text,
            chunks,
            self.model,
            self.vocoder,
            progress=None,
            nfe_step=self.settings["steps"],
            cfg_strength=self.settings["cfg_strength"],
            sway_sampling_coef=self.settings["sway_sampling_coef"],
            device="cpu",
            streaming=True,
        )
        first, _ = next(pieces)
        first_seconds = time.perf_counter() - start
        samples = len(first) + sum(len(piece) for piece, _ in pieces)
        seconds = time.perf_counter() - start
        return {"first": torch.from_numpy(first)}, {
            "seconds": seconds,
            "first_seconds": first_seconds,
            "samples": samples,
        }

    def run(self, job: str, command: dict) -> tuple[dict[str, torch.Tensor], dict]:
        if job == "stream":
            return self.stream(command["ref_text"], command["chunks"])
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
        return outputs, {"seconds": time.perf_counter() - start}

    def serve(self) -> None:
        print(json.dumps({"ready": True}), flush=True)
        with torch.inference_mode():
            for line in sys.stdin:
                command = json.loads(line)
                try:
                    self.use_dtype(command.get("dtype", "float32"))
                    outputs, timings = self.run(command["job"], command)
                except Exception as error:  # reported to the benchmark, which decides; the worker keeps serving
                    print(json.dumps({"job": command["job"], "error": f"{type(error).__name__}: {error}"}), flush=True)
                    continue
                if command.get("save"):
                    save_file(
                        {k: v.float().contiguous() for k, v in outputs.items()},
                        str(self.workdir / "outputs.safetensors"),
                    )
                print(json.dumps({"job": command["job"], **timings}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path, help="folder holding request.json, inputs.safetensors and the checkpoint")
    UpstreamWorker(parser.parse_args().workdir).serve()


if __name__ == "__main__":
    main()
