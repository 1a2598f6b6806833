"""F5-TTS sampling speed: hf_tts against upstream F5-TTS (PyPI `f5-tts`) on the same weights, inputs and noise.

    python scripts/bench_tts.py            # F5TTS_v1_Base size, 32 NFE
    python scripts/bench_tts.py --quick    # F5TTS_v1_Small size, short texts, 8 NFE (a few minutes)

Upstream is installed into its own virtualenv (`.bench_venv/`, created on first use: `torch==2.13.0` first, then
`f5-tts==1.1.22`, `vocos` and `encodec` without their dependencies (they would pull torchaudio and, through it,
another torch), then the packages the measured code imports) and runs in a subprocess
(`scripts/_upstream_runner.py`, which stands in for the training-only and plotting imports and for torchaudio, which
has no wheel for this torch); the two implementations never share a process. Tensors travel through safetensors
files in a temporary folder.

Steps: random F5-TTS weights of the chosen size are saved in the released checkpoint layout, converted with
`hf_tts.convert.f5.convert_f5_checkpoint` and loaded into both implementations. Both get the same reference mel,
token ids and initial noise (upstream draws it from `seed`; ours receives the identical tensor as `latents`), and the
outputs must agree within 1e-4 before any timing is reported. Upstream and ours run alternately, so both see the same
machine load (on a shared machine the figures still move with it); the best of a few runs is reported:
- single utterance: one `sample()` (32 NFE with the default size; `--quick` uses 8), CFG 2, sway -1, fp32: wall time
  and real-time factor (wall time over the duration of the generated audio);
- long form: a ten-sentence paragraph cut into one chunk per sentence (upstream's `chunk_text` rule); upstream samples
  the chunks one call after another (with `--upstream-thread-pool` also in the thread pool its default
  `infer_batch_process` uses; the faster of its modes is the baseline), ours through `sample_chunks`: batched
  solves of at most `CPU_BATCH_FRAMES` padded frames on a CPU, one solve on an accelerator.
- the library's default path: the same two cases with `dtype="auto"` (what `synthesize`, the pipelines and
  `hf-tts synthesize` use: bf16 on CPUs with native bf16, fp32 elsewhere) against upstream's default (fp32 on a
  CPU), timed in alternation again, with the deviation from upstream's fp32 output;
- time to first audio: `model.synthesize_stream(...)` (default dtype, and fp32) against upstream's
  `infer_batch_process(..., streaming=True)` on the same paragraph, reference wave and chunks, both end to end
  (reference mel, sampling, Vocos decoding of the same random vocoder, upstream's own `vocos` package there): the
  seconds to the first piece of audio and to the end of the stream. In fp32 the first audio of both must agree.
With `--compile` our sampler is also timed with `sample(compile=True)` (torch.compile, inductor): the compilation
time is reported on its own, the compiled outputs are checked against upstream as well, and the compiled speed-ups
are printed before the last two lines, which are always the eager (default) configuration's speed-ups.
With `--bf16` both also run on bf16 copies of the model (upstream's own casting, `load_checkpoint(dtype=...)`; ours
`model.to(torch.bfloat16)`): their speeds, and how far each bf16 output is from upstream's fp32 output.

The arithmetic line says how close to this machine's limit both are: the FLOPs of one sample (matmuls,
convolutions and attention, counted by torch's FlopCounterMode) over each wall time, next to the rate of a plain
matrix product of the model's feed-forward shape.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count

from hf_tts.convert.f5 import convert_f5_checkpoint
from hf_tts.convert.vocos import load_upstream_vocos
from hf_tts.models.f5.configuration_f5 import F5TTSConfig
from hf_tts.models.f5.modeling_f5 import F5TTSModel
from hf_tts.processing import (
    TARGET_RMS,
    SynthesisInputs,
    chunk_text,
    estimate_duration,
    normalize_reference_text,
    prompt_text,
)
from hf_tts.synthesis import resolve_sampling_dtype, sample_chunks, sampling_model
from hf_tts.tokenization_f5 import F5Tokenizer

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNNER = Path(__file__).resolve().parent / "_upstream_runner.py"
UPSTREAM_VERSION = "1.1.22"
# The torch every upstream install step names, so that no dependency can replace the CPU wheel with another torch
# (any other torch requirement pulls gigabytes of CUDA libraries).
UPSTREAM_TORCH = "torch==2.13.0"
# Installed without their dependencies: both require torchaudio, which would bring another torch.
UPSTREAM_NO_DEPS = [f"f5-tts=={UPSTREAM_VERSION}", "vocos==0.1.0", "encodec==0.1.1"]
# What the measured code imports at run time: model/utils.py rjieba and pypinyin; cfm.py torchdiffeq (which imports
# scipy); the backbones x-transformers; infer/utils_infer.py tqdm and huggingface_hub; vocos pyyaml, einops and
# huggingface_hub. The training-only, plotting and ASR imports and torchaudio are stood in for by the runner.
UPSTREAM_RUNTIME_PACKAGES = [
    "x-transformers",
    "einops",
    "torchdiffeq",
    "scipy",
    "safetensors",
    "numpy",
    "tqdm",
    "ema_pytorch",
    "rjieba",
    "pypinyin",
    "huggingface_hub",
    "pyyaml",
]
# What the probe imports to decide the venv is complete (import names of the packages above).
UPSTREAM_PROBE_IMPORTS = "x_transformers, torchdiffeq, scipy.integrate, safetensors, rjieba, pypinyin, yaml"
TOLERANCE = 1e-4
VOCAB_SIZE = 2545  # released vocab.txt size; only the embedding shape matters for speed
HOP_LENGTH, SAMPLING_RATE = 256, 24000

SINGLE_TEXT = "She sells sea shells by the sea shore, every single summer."
PARAGRAPH = (
    "The morning was quiet. Birds sang in the old oak tree. A cat watched them from the fence. "
    "The baker opened his shop at seven. Fresh bread filled the street with warmth. Children ran past on their "
    "way to school. A bus stopped at the corner. The driver waved to a friend. Clouds drifted over the hills. "
    "It was going to be a fine day."
)


@dataclass(frozen=True)
class BenchConfig:
    preset: str
    reference_text: str
    reference_seconds: float
    single_text: str
    paragraph: str
    single_repeats: int  # timed runs per implementation; the best is reported
    longform_repeats: int
    steps: int = 32
    # the streamed paragraph's reference: a few seconds at an ordinary speaking rate, so the paragraph is cut into
    # chunks by the usual rule (max_chars from the reference's bytes per second)
    stream_reference_text: str = "Hello there, my friend. It is good to see you."
    stream_reference_seconds: float = 3.0
    stream_repeats: int = 1  # a streamed paragraph fills a chunk of about 22 s (upstream's rule): one timed run each


FULL = BenchConfig("F5TTS_v1_Base", "Hello there, my friend.", 1.2, SINGLE_TEXT, PARAGRAPH, 2, 1)
QUICK = BenchConfig(
    "F5TTS_v1_Small",
    "Hello there.",
    0.6,
    "She sells sea shells.",
    "The birds sang. A cat watched. The shop opened. Bread was warm. The kids ran. A bus stopped. "
    "The man waved. Clouds drifted. It was calm. The day began.",
    single_repeats=3,
    longform_repeats=2,
    steps=8,
)
SAMPLING = {"cfg_strength": 2.0, "sway_sampling_coef": -1.0, "seed": 1234}
# The released charactr/vocos-mel-24khz config.yaml (the weights are random, drawn by the upstream worker).
VOCOS_CONFIG_YAML = """\
feature_extractor:
  class_path: vocos.feature_extractors.MelSpectrogramFeatures
  init_args: {sample_rate: 24000, n_fft: 1024, hop_length: 256, n_mels: 100, padding: center}
backbone:
  class_path: vocos.models.VocosBackbone
  init_args: {input_channels: 100, dim: 512, intermediate_dim: 1536, num_layers: 8}
head:
  class_path: vocos.heads.ISTFTHead
  init_args: {dim: 512, n_fft: 1024, hop_length: 256, padding: center}
"""
# How far the first streamed audio (fp32) of the two may be apart: the vocoder's fp32 products round differently
WAVE_TOLERANCE = 1e-3


def ensure_upstream_venv(venv: Path) -> Path:
    """The benchmark virtualenv's python, creating the venv and installing upstream into it when needed."""
    python = venv / "bin" / "python"
    # find_spec only for f5_tts, vocos and encodec: importing them needs the runner's stand-ins (torchaudio, ...)
    probe = [
        str(python),
        "-c",
        f"import importlib.util as u, importlib.metadata as m, {UPSTREAM_PROBE_IMPORTS}; "
        "assert all(u.find_spec(name) for name in ('f5_tts.model', 'vocos', 'encodec')) "
        f"and m.version('f5-tts') == '{UPSTREAM_VERSION}' and m.version('torch').split('+')[0] == '{UPSTREAM_TORCH.split('==')[1]}'",
    ]
    if python.exists() and subprocess.run(probe, capture_output=True, env=_runner_env()).returncode == 0:
        return python
    print(f"installing upstream f5-tts {UPSTREAM_VERSION} into {venv} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, UPSTREAM_TORCH], check=True)  # first: the CPU wheel this project pins
    subprocess.run([*pip, "--no-deps", *UPSTREAM_NO_DEPS], check=True)
    subprocess.run([*pip, UPSTREAM_TORCH, *UPSTREAM_RUNTIME_PACKAGES], check=True)
    if subprocess.run(probe, env=_runner_env()).returncode != 0:
        raise SystemExit(f"{venv} is incomplete after installing upstream (the import error is above)")
    return python


def _runner_env() -> dict[str, str]:
    # keep our checkout (and its editable install) off the upstream interpreter's path
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def write_random_checkpoint(config: F5TTSConfig, path: Path, seed: int) -> None:
    """Random weights in the released layout (`ema_model.transformer.*` + `initted` + `step`). Every tensor is
    drawn, zero-initialised adaLN and output layers included, so no branch of the network is skipped."""
    torch.manual_seed(seed)
    model = F5TTSModel(config)
    state = {}
    for name, tensor in model.state_dict().items():
        if not name.startswith("backbone."):
            continue
        values = torch.randn(tensor.shape) * 0.02 if tensor.is_floating_point() else tensor
        state["ema_model.transformer." + name.removeprefix("backbone.")] = values.contiguous()
    head_dim = config.dim_head
    state["ema_model.transformer.rotary_embed.inv_freq"] = 1.0 / (10000 ** (torch.arange(0, head_dim, 2) / head_dim))
    state["initted"] = torch.tensor(True)
    state["step"] = torch.tensor(1250000)
    save_file(state, str(path))


def write_vocab(path: Path) -> None:
    """A vocab.txt of the released size: space, printable ASCII, then filler tokens."""
    ascii_tokens = [chr(c) for c in range(33, 127)]
    fillers = [f"<unused{i}>" for i in range(VOCAB_SIZE - 1 - len(ascii_tokens))]
    path.write_text("\n".join([" ", *ascii_tokens, *fillers]) + "\n", encoding="utf-8")


def upstream_arch(config: F5TTSConfig) -> dict:
    """The `DiT(**arch)` keywords upstream builds this config with (its YAML `model.arch` + injected sizes)."""
    keys = ("dim", "depth", "heads", "dim_head", "ff_mult", "text_dim", "conv_layers", "text_mask_padding")
    arch = {key: getattr(config, key) for key in keys}
    arch.update(qk_norm=config.qk_norm, pe_attn_head=config.pe_attn_head, text_num_embeds=config.text_num_embeds)
    arch["mel_dim"] = config.mel_dim
    return arch


def reference_wave(seconds: float) -> torch.Tensor:
    """A voiced-sounding test signal (harmonics of a gliding 140 Hz tone with a syllable-rate envelope)."""
    t = torch.arange(int(seconds * SAMPLING_RATE)) / SAMPLING_RATE
    f0 = 140 + 20 * torch.sin(2 * math.pi * 0.7 * t)
    phase = 2 * math.pi * torch.cumsum(f0, 0) / SAMPLING_RATE
    voiced = sum(torch.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.5 + 0.5 * torch.sin(2 * math.pi * 4 * t).clamp(min=0)
    return (0.1 * voiced * envelope)[None].float()


def seeded_noise(durations: list[int], mel_dim: int, seed: int) -> torch.Tensor:
    """Upstream's initial noise: `manual_seed(seed)` then `randn(duration, mel_dim)` per sample, zero-padded."""
    rows = []
    for frames in durations:
        torch.manual_seed(seed)
        rows.append(torch.randn(frames, mel_dim))
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)


class UpstreamJobError(RuntimeError):
    """An upstream job raised (the worker reports it and keeps serving)."""


class UpstreamProcess:
    """The upstream worker subprocess: one job per request line, one JSON timing (or error) line back."""

    def __init__(self, python: Path, workdir: Path):
        self.workdir = workdir
        self.process = subprocess.Popen(
            [str(python), str(RUNNER), str(workdir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=_runner_env(),
            cwd=workdir,
        )
        self._read()

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the upstream worker exited with code {self.process.wait()} (see its stderr above)")
        return json.loads(line)

    def run(
        self, job: str, save: bool = False, dtype: str = "float32", **job_options
    ) -> tuple[float, dict[str, torch.Tensor]]:
        """Runs `job` (with any job-specific options); its seconds and saved outputs. The whole reply (timings a job
        adds, such as `first_seconds`) stays in `last_reply`."""
        self.process.stdin.write(json.dumps({"job": job, "save": save, "dtype": dtype, **job_options}) + "\n")
        self.process.stdin.flush()
        reply = self.last_reply = self._read()
        if "error" in reply:
            raise UpstreamJobError(f"upstream {job} ({dtype}) raised {reply['error']}")
        seconds = reply["seconds"]
        outputs = load_file(str(self.workdir / "outputs.safetensors")) if save else {}
        return seconds, outputs

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def timed(fn) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
def _cpu_flash_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FlopCounterMode counts the CUDA attention kernels only; the CPU one does the same products."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def counted_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_rate(rows: int, inner: int, cols: int, dtype: torch.dtype) -> float:
    """Best GFLOP/s of a (rows x inner) @ (inner x cols) product on this machine, the ceiling a sampler made of such
    products can reach."""
    a, b = torch.randn(rows, inner, dtype=dtype), torch.randn(inner, cols, dtype=dtype)
    torch.mm(a, b)
    best = min(timed(lambda: torch.mm(a, b))[0] for _ in range(10))
    return 2 * rows * inner * cols / best / 1e9


def measure(upstream: UpstreamProcess, job: str, ours, repeats: int, dtype: str = "float32"):
    """Upstream's `job` and `ours()` in alternation, `repeats` times each: (best upstream seconds, best of ours,
    upstream's outputs of the first run, our first output)."""
    up_seconds, up_outputs = upstream.run(job, save=True, dtype=dtype)
    our_seconds, our_output = timed(ours)
    up_times, our_times = [up_seconds], [our_seconds]
    for _ in range(repeats - 1):
        up_times.append(upstream.run(job, dtype=dtype)[0])
        our_times.append(timed(ours)[0])
    return min(up_times), min(our_times), up_outputs, our_output


def machine_description() -> str:
    cpu = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        cpu = names[0] if names else cpu
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def check_agreement(label: str, ours: torch.Tensor, upstream: torch.Tensor) -> None:
    diff = (ours - upstream).abs().max().item()
    print(f"  {label}: max |ours - upstream| = {diff:.2e} (output max |x| {upstream.abs().max().item():.2f})")
    if not diff <= TOLERANCE:
        raise SystemExit(f"outputs disagree ({label}: {diff:.2e} > {TOLERANCE:.0e}); timings would be meaningless")


def time_compiled(
    ours_single, ours_longform, up_single: torch.Tensor, up_longform: dict, chunk_durations: list[int], bench
) -> dict[str, float]:
    """Our sampler with compile=True: the compiling first calls (timed together), the agreement checks against
    upstream's outputs, then the best of the usual number of runs for each case."""
    start = time.perf_counter()
    single_out = ours_single(compile=True)
    out = ours_longform(compile=True)
    compile_seconds = time.perf_counter() - start
    check_agreement("compiled single utterance", single_out, up_single)
    for i in range(len(chunk_durations)):
        check_agreement(f"compiled long-form chunk {i}", out[i], up_longform[f"chunk_{i}"][0])
    single = min(timed(lambda: ours_single(compile=True))[0] for _ in range(bench.single_repeats))
    long = min(timed(lambda: ours_longform(compile=True))[0] for _ in range(bench.longform_repeats))
    return {"compile": compile_seconds, "single": single, "long": long}


def longform_mels(model: F5TTSModel, cond, text_ids, durations: list[int], **sample_options) -> list[torch.Tensor]:
    """Our long-form path, `hf_tts.synthesis.sample_chunks` (batched solves sized for the device), on mel inputs:
    each chunk's whole mel (prompt frames included, as upstream returns it)."""
    inputs = SynthesisInputs(
        cond=cond, text=text_ids, duration=torch.tensor(durations), ref_frames=0, chunks=[], reference=None
    )
    return sample_chunks(model, inputs, **sample_options)


def relative_deviation(outputs: list[torch.Tensor], references: list[torch.Tensor]) -> float:
    """Largest max |output - reference| / max |reference| over the pairs."""
    return max(((out.float() - ref).abs().max() / ref.abs().max()).item() for out, ref in zip(outputs, references))


def time_bfloat16(
    upstream: UpstreamProcess,
    folder: Path,
    inputs: tuple,
    up_single: torch.Tensor,
    up_long: dict,
    durations,
    bench,
) -> dict:
    """Both implementations on bf16 copies of the same model (`folder`, loaded with dtype=bfloat16): best times, and
    each output's largest deviation from upstream's fp32 output (the reference a bf16 run approximates). A case
    upstream fails in bf16 is timed for ours alone, with upstream's error kept for the report."""
    ref_mel, single_ids, single_duration, single_noise, batch_cond, chunk_ids, batch_noise, options = inputs
    half = F5TTSModel.from_pretrained(folder, dtype=torch.bfloat16).eval()
    bf = torch.bfloat16

    def ours_single() -> torch.Tensor:
        return half.sample(ref_mel.to(bf), single_ids, single_duration, latents=single_noise.to(bf), **options)

    def ours_longform() -> list[torch.Tensor]:
        return longform_mels(half, batch_cond.to(bf), chunk_ids, durations, latents=batch_noise.to(bf), **options)

    half.sample(ref_mel.to(bf), single_ids, single_duration, latents=single_noise.to(bf), **{**options, "steps": 2})
    result = {}
    cases = (
        ("single", "single", ours_single, bench.single_repeats, ["single"], [up_single[0]]),
        (
            "long",
            "longform_sequential",
            ours_longform,
            bench.longform_repeats,
            [f"chunk_{i}" for i in range(len(durations))],
            [up_long[f"chunk_{i}"][0] for i in range(len(durations))],
        ),
    )
    try:
        upstream.run("warmup", dtype="bfloat16")
    except UpstreamJobError as error:
        result["up_error"] = str(error)
    for key, job, ours, repeats, names, references in cases:
        try:
            if "up_error" in result:
                raise UpstreamJobError(result["up_error"])
            result[f"up_{key}"], result[f"our_{key}"], up_out, our_out = measure(
                upstream, job, ours, repeats, "bfloat16"
            )
            up_outputs = [up_out[name].reshape(reference.shape) for name, reference in zip(names, references)]
            result[f"up_{key}_dev"] = relative_deviation(up_outputs, references)
        except UpstreamJobError as error:
            result[f"up_{key}"] = None
            result["up_error"] = str(error)
            result[f"our_{key}"], our_out = min((timed(ours) for _ in range(repeats)), key=lambda run: run[0])
        our_outputs = [our_out[i][: reference.shape[0]] for i, reference in enumerate(references)]
        result[f"our_{key}_dev"] = relative_deviation(our_outputs, references)
    return result


def time_default_path(
    upstream: UpstreamProcess,
    model: F5TTSModel,
    inputs: tuple,
    up_single: torch.Tensor,
    up_long: dict,
    durations,
    bench,
) -> dict:
    """The library's default precision (`dtype="auto"`, resolved and copied as `synthesize` does it) against
    upstream's default (fp32 on a CPU), timed in alternation once more, with each output's largest deviation from
    upstream's fp32 output."""
    ref_mel, single_ids, single_duration, single_noise, batch_cond, chunk_ids, batch_noise, options = inputs
    dtype = resolve_sampling_dtype("auto", model.device)
    sampler = sampling_model(model, dtype)

    def ours_single() -> torch.Tensor:
        return sampler.sample(ref_mel.to(dtype), single_ids, single_duration, latents=single_noise.to(dtype), **options)

    def ours_longform() -> list[torch.Tensor]:
        return longform_mels(
            sampler, batch_cond.to(dtype), chunk_ids, durations, latents=batch_noise.to(dtype), **options
        )

    sampler.sample(
        ref_mel.to(dtype), single_ids, single_duration, latents=single_noise.to(dtype), **{**options, "steps": 2}
    )
    result = {"dtype": str(dtype).removeprefix("torch.")}
    result["up_single"], result["our_single"], _, our_out = measure(
        upstream, "single", ours_single, bench.single_repeats
    )
    result["single_dev"] = relative_deviation([our_out[0][: up_single.shape[1]]], [up_single[0]])
    result["up_long"], result["our_long"], _, our_out = measure(
        upstream, "longform_sequential", ours_longform, bench.longform_repeats
    )
    references = [up_long[f"chunk_{i}"][0] for i in range(len(durations))]
    result["long_dev"] = relative_deviation(
        [out[: reference.shape[0]] for out, reference in zip(our_out, references)], references
    )
    return result


def report_default_path(default: dict, generated_single: float, generated_long: float) -> None:
    print(
        f"default path (hf_tts dtype=auto -> {default['dtype']} on this machine; upstream's CPU default fp32; timed "
        "again in alternation; deviation: max |hf_tts - upstream fp32| / max |upstream fp32|):"
    )
    for label, key, generated in (
        ("single utterance", "single", generated_single),
        ("long form", "long", generated_long),
    ):
        up, ours = default[f"up_{key}"], default[f"our_{key}"]
        print(f"  {label}, upstream fp32:   {up:8.2f} s  RTF {up / generated:6.2f}")
        print(
            f"  {label}, hf_tts {default['dtype']}: {ours:8.2f} s  RTF {ours / generated:6.2f}  deviation "
            f"{default[f'{key}_dev']:.1e}"
        )
    for label, key in (("single-utterance", "single"), ("long-form", "long")):
        print(f"default-path {label} speedup vs upstream default: {default[f'up_{key}'] / default[f'our_{key}']:.2f}x")


def upstream_reference_wave(model: F5TTSModel, wave: torch.Tensor) -> torch.Tensor:
    """The reference wave upstream's `infer_batch_process` gets from its `preprocess_ref_audio_text` (clipped at a
    silence past 12 s, edge silence trimmed, 50 ms of silence appended; loudness not yet raised): our processor's
    prepared reference with its loudness brought back, so both sample from the same prompt."""
    reference = model.get_processor().feature_extractor.prepare_reference(wave.numpy(), SAMPLING_RATE)
    gain = reference.rms / TARGET_RMS if reference.rms < TARGET_RMS else 1.0
    return torch.from_numpy(reference.wave * gain).float()


def our_stream(
    model: F5TTSModel, wave: torch.Tensor, ref_text: str, paragraph: str, dtype: str, sampling: dict
) -> dict:
    """`model.synthesize_stream` end to end: seconds to the first piece and to the end, the first piece's audio, the
    chunks it cut the paragraph into and the samples in all."""
    start = time.perf_counter()
    pieces = model.synthesize_stream(
        paragraph,
        wave.numpy(),
        ref_text,
        sampling_rate=SAMPLING_RATE,
        nfe_step=sampling["steps"],
        cfg_strength=sampling["cfg_strength"],
        sway_sampling_coef=sampling["sway_sampling_coef"],
        seed=sampling["seed"],
        dtype=dtype,
    )
    first = next(pieces)
    first_seconds = time.perf_counter() - start
    rest = list(pieces)
    seconds = time.perf_counter() - start
    chunks = [piece.text for piece in (first, *rest) if piece.chunk >= 0]
    samples = sum(len(piece.audio) for piece in (first, *rest))
    return {
        "first_seconds": first_seconds,
        "seconds": seconds,
        "first": first.audio,
        "chunks": chunks,
        "samples": samples,
    }


def time_stream(
    upstream: UpstreamProcess, model: F5TTSModel, wave: torch.Tensor, ref_text: str, paragraph: str, sampling, repeats
) -> dict:
    """Time to first audio: upstream's `infer_batch_process(..., streaming=True)` on the chunks ours cut the
    paragraph into, against `synthesize_stream` with the default dtype and with fp32, in alternation (best of
    `repeats`). The first runs are warm-ups and the agreement check: in fp32 both first audios must match."""
    ours_fp32 = our_stream(model, wave, ref_text, paragraph, "float32", sampling)
    our_stream(model, wave, ref_text, paragraph, "auto", sampling)
    chunks = ours_fp32["chunks"]
    up_ref_text = normalize_reference_text(ref_text)  # what upstream's preprocess_ref_audio_text hands on
    # also the warm-up (its first call imports the inference module): not timed
    _, up_out = upstream.run("stream", save=True, ref_text=up_ref_text, chunks=chunks)
    up_first = up_out["first"].numpy()
    common = min(len(up_first), len(ours_fp32["first"]))
    diff = float(abs(ours_fp32["first"][:common] - up_first[:common]).max())
    scale = float(abs(up_first[:common]).max())
    print(
        f"  first streamed audio (fp32, {common} samples): max |ours - upstream| = {diff:.2e} (max |x| {scale:.2f}); "
        f"stream length ours {ours_fp32['samples']}, upstream {upstream.last_reply['samples']} samples"
    )
    if not diff <= WAVE_TOLERANCE * max(scale, 1.0):
        raise SystemExit(f"streamed audio disagrees ({diff:.2e}); time to first audio would be meaningless")
    runs = {"upstream": [], "auto": [], "float32": []}
    for _ in range(repeats):
        upstream.run("stream", ref_text=up_ref_text, chunks=chunks)
        runs["upstream"].append(upstream.last_reply)
        for dtype in ("auto", "float32"):
            runs[dtype].append(our_stream(model, wave, ref_text, paragraph, dtype, sampling))
    best = {who: {k: min(run[k] for run in done) for k in ("first_seconds", "seconds")} for who, done in runs.items()}
    return {"chunks": chunks, "samples": ours_fp32["samples"], "best": best}


def report_stream(stream: dict, repeats: int) -> None:
    chunks, best = stream["chunks"], stream["best"]
    audio_seconds = stream["samples"] / SAMPLING_RATE
    sizes = ", ".join(str(len(chunk.encode("utf-8"))) for chunk in chunks)
    print(
        f"time to first audio, paragraph in {len(chunks)} chunks ({sizes} bytes), {audio_seconds:.1f} s of audio, end "
        f"to end with the vocoder (best of {repeats}):"
    )
    auto = resolve_sampling_dtype("auto")
    for who, label in (
        ("upstream", "upstream infer_batch_process(streaming=True), fp32"),
        ("auto", f"hf_tts synthesize_stream, dtype=auto ({str(auto).removeprefix('torch.')})"),
        ("float32", "hf_tts synthesize_stream, float32"),
    ):
        print(f"  {label}: first audio {best[who]['first_seconds']:7.2f} s, whole stream {best[who]['seconds']:7.2f} s")
    for who, label in (("auto", "default dtype"), ("float32", "fp32")):
        print(
            f"time-to-first-audio speedup vs upstream ({label}): "
            f"{best['upstream']['first_seconds'] / best[who]['first_seconds']:.2f}x; whole stream "
            f"{best['upstream']['seconds'] / best[who]['seconds']:.2f}x"
        )


def report_bfloat16(
    bf16: dict, up_single: float, up_long: float, generated_single: float, generated_long: float, flops, shape
) -> None:
    rate = matmul_rate(*shape, torch.bfloat16)
    print("bf16 (both on bf16 copies of the model; deviation: max |bf16 - upstream fp32| / max |upstream fp32|):")
    for label, key, generated in (
        ("single utterance", "single", generated_single),
        ("long form", "long", generated_long),
    ):
        for who, name in (("up", "upstream"), ("our", "hf_tts")):
            seconds = bf16[f"{who}_{key}"]
            if seconds is None:
                print(f"  {label}, {name}: failed: {bf16['up_error']}")
                continue
            print(
                f"  {label}, {name}: {seconds:8.2f} s  RTF {seconds / generated:6.2f}  deviation "
                f"{bf16[f'{who}_{key}_dev']:.1e}"
            )
    print(f"  arithmetic: hf_tts {flops / bf16['our_single'] / 1e9:.0f} GFLOP/s; bf16 matmul {rate:.0f} GFLOP/s")
    for label, key in (("single-utterance", "single"), ("long-form", "long")):
        if bf16[f"up_{key}"] is not None:
            print(f"bf16 {label} speedup vs upstream bf16: {bf16[f'up_{key}'] / bf16[f'our_{key}']:.2f}x")
    print(f"hf_tts bf16 vs upstream fp32 (its CPU default), single utterance: {up_single / bf16['our_single']:.2f}x")
    print(f"hf_tts bf16 vs upstream fp32 (its CPU default), long form: {up_long / bf16['our_long']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="F5TTS_v1_Small size and short texts (< 5 min)")
    parser.add_argument("--venv", type=Path, default=REPO_ROOT / ".bench_venv", help="upstream virtualenv")
    parser.add_argument(
        "--upstream-thread-pool",
        action="store_true",
        help="also time upstream's default long-form path (chunks in a ThreadPoolExecutor); the faster mode is the "
        "baseline",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time sample(compile=True) (torch.compile; the first calls compile, reported separately)",
    )
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="also time both on bf16 copies of the model and report their deviation from upstream's fp32 output",
    )
    args = parser.parse_args()
    bench = QUICK if args.quick else FULL
    sampling = {**SAMPLING, "steps": bench.steps}
    python = ensure_upstream_venv(args.venv)

    with tempfile.TemporaryDirectory(prefix="bench_tts_") as tmp:
        workdir = Path(tmp)
        config = F5TTSConfig.from_preset(bench.preset, text_num_embeds=VOCAB_SIZE)
        write_random_checkpoint(config, workdir / "model_ema.safetensors", sampling["seed"])
        write_vocab(workdir / "vocab.txt")
        converted = convert_f5_checkpoint(
            workdir / "model_ema.safetensors", bench.preset, workdir / "vocab.txt", workdir / "converted"
        )
        model = F5TTSModel.from_pretrained(converted, dtype=torch.float32).eval()
        tokenizer = F5Tokenizer.from_pretrained(converted)

        wave = reference_wave(bench.reference_seconds)
        ref_mel = model.mel_spec(wave).transpose(1, 2).contiguous()  # (1, frames, n_mels), upstream's mel
        ref_frames = wave.shape[-1] // HOP_LENGTH  # upstream's ref_audio_len
        ref_text = prompt_text(normalize_reference_text(bench.reference_text))
        chunks = chunk_text(bench.paragraph, max_bytes=1)  # one sentence per chunk
        single_ids = tokenizer.encode_batch(ref_text + bench.single_text).ids
        chunk_ids = tokenizer.encode_batch([ref_text + chunk for chunk in chunks]).ids
        # upstream's duration formula, raised as `sample()` raises it to the prompt or text length + 1
        shortest = [max(ref_mel.shape[1], int((ids != -1).sum())) + 1 for ids in (*single_ids, *chunk_ids)]
        estimates = [estimate_duration(ref_frames, ref_text, t) for t in (bench.single_text, *chunks)]
        single_duration, *chunk_durations = [max(a, b) for a, b in zip(estimates, shortest)]

        stream_wave = reference_wave(bench.stream_reference_seconds)
        stream_inputs = {"stream_ref_wave": upstream_reference_wave(model, stream_wave[0])}
        inputs = {"ref_mel": ref_mel, "single_text": single_ids, **stream_inputs}
        inputs.update({f"chunk_text_{i}": ids[ids != -1][None] for i, ids in enumerate(chunk_ids)})
        save_file(inputs, str(workdir / "inputs.safetensors"))
        request = {
            "arch": upstream_arch(config),
            "settings": sampling,
            "single_duration": single_duration,
            "chunk_durations": chunk_durations,
            "num_threads": torch.get_num_threads(),
        }
        (workdir / "request.json").write_text(json.dumps(request))
        (workdir / "vocos").mkdir()
        (workdir / "vocos" / "config.yaml").write_text(VOCOS_CONFIG_YAML)

        mel_dim = config.mel_dim
        options = {k: sampling[k] for k in ("steps", "cfg_strength", "sway_sampling_coef")}
        single_noise = seeded_noise([single_duration], mel_dim, sampling["seed"])
        batch_noise = seeded_noise(chunk_durations, mel_dim, sampling["seed"])
        batch_cond = ref_mel.expand(len(chunks), -1, -1)

        def ours_single(compile: bool = False) -> torch.Tensor:
            return model.sample(ref_mel, single_ids, single_duration, latents=single_noise, compile=compile, **options)

        def ours_single_steps(steps: int) -> torch.Tensor:
            return model.sample(
                ref_mel, single_ids, single_duration, latents=single_noise, **{**options, "steps": steps}
            )

        ours_inputs = (ref_mel, single_ids, single_duration, single_noise, batch_cond, chunk_ids, batch_noise, options)

        def ours_longform(compile: bool = False) -> list[torch.Tensor]:
            return longform_mels(
                model, batch_cond, chunk_ids, chunk_durations, latents=batch_noise, compile=compile, **options
            )

        generated_single = (single_duration - ref_frames) * HOP_LENGTH / SAMPLING_RATE
        generated_long = sum(d - ref_frames for d in chunk_durations) * HOP_LENGTH / SAMPLING_RATE
        print(f"machine: {machine_description()}")
        print(
            f"model: {bench.preset} layout, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
            f"random weights; {sampling['steps']} NFE, CFG {sampling['cfg_strength']}, sway "
            f"{sampling['sway_sampling_coef']}, fp32"
        )
        print(f"single utterance: {single_duration} frames ({generated_single:.2f} s generated after the prompt)")
        print(
            f"long form: {len(chunks)} chunks of {min(chunk_durations)}-{max(chunk_durations)} frames "
            f"({generated_long:.2f} s generated)"
        )

        upstream = UpstreamProcess(python, workdir)
        try:
            # the worker's own Vocos (upstream package, random weights), read by hf_tts' upstream-folder loader
            model.attach_vocoder(load_upstream_vocos(workdir / "vocos"))
            upstream.run("warmup")
            ours_single_steps(2)

            print("agreement (fp32, same weights, inputs and noise):")
            up_single, our_single, up_out, our_out = measure(upstream, "single", ours_single, bench.single_repeats)
            check_agreement("single utterance", our_out, up_out["single"])
            up_single_out = up_out["single"]
            up_sequential, our_long, up_out, our_out = measure(
                upstream, "longform_sequential", ours_longform, bench.longform_repeats
            )
            for i in range(len(chunk_durations)):
                check_agreement(f"long-form chunk {i}", our_out[i], up_out[f"chunk_{i}"][0])
            up_threaded = [upstream.run("longform_threaded")[0]] if args.upstream_thread_pool else []
            default = time_default_path(upstream, model, ours_inputs, up_single_out, up_out, chunk_durations, bench)
            print("agreement of the streamed audio (fp32, same weights, vocoder, reference and seed):")
            stream = time_stream(
                upstream,
                model,
                stream_wave[0],
                bench.stream_reference_text,
                PARAGRAPH,
                sampling,
                bench.stream_repeats,
            )
            if args.compile:
                compiled = time_compiled(ours_single, ours_longform, up_single_out, up_out, chunk_durations, bench)
            if args.bf16:
                bf16 = time_bfloat16(upstream, converted, ours_inputs, up_single_out, up_out, chunk_durations, bench)
        finally:
            upstream.close()
        flops = counted_flops(lambda: ours_single_steps(1)) * sampling["steps"]
        feed_forward = model.backbone.transformer_blocks[0].ff.ff[0][0]
        matmul_shape = (2 * single_duration, feed_forward.in_features, feed_forward.out_features)

    up_long_modes = {"sequential": up_sequential}
    if up_threaded:
        up_long_modes["thread pool"] = min(up_threaded)
    baseline_mode = min(up_long_modes, key=up_long_modes.get)
    up_long = up_long_modes[baseline_mode]

    print(f"single utterance (best of {bench.single_repeats}):")
    print(f"  upstream: {up_single:8.2f} s  RTF {up_single / generated_single:6.2f}")
    print(f"  hf_tts:   {our_single:8.2f} s  RTF {our_single / generated_single:6.2f}")
    print(f"long form, {len(chunks)} sentences (best of {bench.longform_repeats}):")
    for mode, seconds in up_long_modes.items():
        print(f"  upstream chunk by chunk, {mode}: {seconds:8.2f} s  RTF {seconds / generated_long:6.2f}")
    print(f"  hf_tts sample_chunks:     {our_long:8.2f} s  RTF {our_long / generated_long:6.2f}")
    rate = matmul_rate(*matmul_shape, torch.float32)
    print(
        f"arithmetic: {flops / 1e9:.0f} GFLOP per single utterance; upstream {flops / up_single / 1e9:.0f} GFLOP/s, "
        f"hf_tts {flops / our_single / 1e9:.0f} GFLOP/s; this machine's fp32 matmul "
        f"({'x'.join(map(str, matmul_shape))}): {rate:.0f} GFLOP/s"
    )
    report_default_path(default, generated_single, generated_long)
    report_stream(stream, bench.stream_repeats)
    if args.bf16:
        report_bfloat16(bf16, up_single, up_long, generated_single, generated_long, flops, matmul_shape)
    if args.compile:
        print(f"hf_tts with compile=True (first calls, compiling included: {compiled['compile']:.1f} s):")
        print(
            f"  single utterance:         {compiled['single']:8.2f} s  RTF {compiled['single'] / generated_single:6.2f}"
        )
        print(f"  long form, sample_chunks: {compiled['long']:8.2f} s  RTF {compiled['long'] / generated_long:6.2f}")
        print(f"compiled single-utterance speedup vs upstream: {up_single / compiled['single']:.2f}x")
        print(f"compiled long-form speedup vs upstream: {up_long / compiled['long']:.2f}x")
    print(f"single-utterance speedup vs upstream: {up_single / our_single:.2f}x")
    print(f"long-form speedup vs upstream: {up_long / our_long:.2f}x")


if __name__ == "__main__":
    main()
