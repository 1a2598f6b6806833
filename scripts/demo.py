"""`make demo`: the package end to end, offline, against its own local Hub.

1. start the local registry (`hf-tts hub serve`) on a free loopback port and point huggingface_hub at it;
2. build two small F5-TTS "fine-tunes" of a shrunk F5TTS_v1_Base (seeded), each with a small random Vocos vocoder
   and a char tokenizer, and push them (with generated model cards) to the registry;
3. merge them 0.6 / 0.4 by repo id with `hf_tts.merge`, which writes the merge card and pushes the result;
4. load the merge back by repo id with `AutoModel.from_pretrained` and check it is 0.6 * a + 0.4 * b;
5. synthesize a few seconds with the zero-shot text-to-speech pipeline loaded from the repo id into
   `demo_out/speech.wav`, and draw its mel spectrogram into `demo_out/mel.png`;
6. upload the speech and its mel picture to the merged repo as samples, and screenshot the merged model's page in
   the registry (headless Chromium) into `demo_out/registry.png`;
7. print a summary (what was pushed where, timings, real-time factor) and stop the registry (with `--serve`, keep
   it running until Ctrl-C, so the printed page URLs can be opened in a browser).

The weights are random (no pretrained checkpoint is downloaded), so the audio is not intelligible speech: the demo
shows the plumbing, which is the same for converted upstream checkpoints (`hf-tts convert f5 ...`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# huggingface_hub reads HF_ENDPOINT when it is imported, so nothing that imports it (hf_tts, transformers) may be
# imported before the registry is up and the variable is set.

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "demo"
# A char vocab covering the demo text; converted upstream models ship their 2545-token vocab.txt.
VOCAB = [" ", *sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-"))]
TEXT = "Hello from the local hub. This voice is a merge of two fine tunes."
REF_TEXT = "a reference voice."


def start_registry(root: Path) -> tuple[subprocess.Popen, str]:
    """`hf-tts hub serve --port 0` in a child process; its first stdout line is the URL it listens on."""
    process = subprocess.Popen(
        [sys.executable, "-m", "hf_tts.cli", "hub", "serve", "--root", str(root), "--port", "0", "--quiet"],
        stdout=subprocess.PIPE,
        text=True,
    )
    url = process.stdout.readline().strip()
    if not url.startswith("http://"):
        process.kill()
        raise SystemExit(f"the registry did not start (exit code {process.wait()})")
    return process, url


def screenshot(url: str, target: Path) -> str | None:
    """A headless Chromium screenshot of `url` into `target`; None when it worked, else why it was skipped."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return "chromium is not installed (`make chromium` installs it)"
    with tempfile.TemporaryDirectory(prefix="hf_tts_chromium_") as profile:
        result = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",  # the demo may run as root (containers); the page is our own registry's
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                "--disable-background-networking",
                f"--user-data-dir={profile}",
                "--window-size=1280,1700",
                f"--screenshot={target}",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    if result.returncode != 0 or not target.exists():
        return f"chromium failed (exit {result.returncode}): {result.stderr.strip()[-300:]}"
    return None


def shrunk_f5_config():
    from hf_tts import F5TTSConfig

    return F5TTSConfig.from_preset(
        "F5TTS_v1_Base",
        dim=128,
        depth=4,
        heads=4,
        dim_head=32,
        text_dim=64,
        conv_layers=2,
        text_num_embeds=len(VOCAB),
        tokenizer_type="char",
    )


def build_finetunes(work: Path, seed: int) -> list[Path]:
    """A seeded base model with a random Vocos attached, and two "fine-tunes" of it: the base plus a small seeded
    offset on every backbone weight (the vocoder is shared). Each folder has the tokenizer, processor and a card."""
    import torch

    from hf_tts import F5FeatureExtractor, F5Processor, F5Tokenizer, F5TTSModel, VocosConfig, VocosModel
    from hf_tts.hub.cards import write_model_card

    torch.manual_seed(seed)
    base = F5TTSModel(shrunk_f5_config())
    base.attach_vocoder(VocosModel(VocosConfig(dim=64, intermediate_dim=192, num_layers=2)))
    vocab_file = work / "vocab.txt"
    vocab_file.write_text("".join(f"{token}\n" for token in VOCAB), encoding="utf-8")
    processor = F5Processor(
        F5FeatureExtractor(sampling_rate=base.config.sampling_rate, hop_length=base.config.hop_length),
        F5Tokenizer(str(vocab_file), tokenizer_type="char"),
    )
    folders = []
    for index, name in enumerate(("f5-finetune-a", "f5-finetune-b"), start=1):
        generator = torch.Generator().manual_seed(seed + index)
        model = F5TTSModel(base.config)
        model.load_state_dict(base.state_dict())
        with torch.no_grad():
            for parameter in model.backbone.parameters():
                parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
        folder = work / name
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        write_model_card(
            folder,
            kind="finetune",
            config=model.config,
            extra_context={"training": {"recipe": "seeded offset of a shrunk F5TTS_v1_Base", "seed": seed + index}},
        )
        folders.append(folder)
    return folders


def reference_voice(sampling_rate: int, seconds: float = 2.0):
    """A synthetic, voice-like reference (a vibrato harmonic tone with a syllable envelope): no audio is downloaded."""
    import numpy as np

    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    pitch = 140 + 15 * np.sin(2 * np.pi * 5 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sampling_rate
    tone = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 * (1 - np.cos(2 * np.pi * 3 * t))
    return (0.1 * tone * envelope / np.abs(tone).max()).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(PROJECT_ROOT / "demo_out"), help="output folder (default: demo_out/)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nfe-step", type=int, default=16, help="ODE steps of the sampler")
    parser.add_argument(
        "--serve", action="store_true", help="keep the registry running after the summary (Ctrl-C stops it)"
    )
    args = parser.parse_args(argv)
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    started = time.perf_counter()
    # A fresh registry and HF cache per run, so the demo never touches the user's cache or a real Hub.
    scratch = Path(tempfile.mkdtemp(prefix="hf_tts_demo_"))
    registry, url = start_registry(scratch / "registry")
    os.environ.update(HF_ENDPOINT=url, HF_HOME=str(scratch / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1")
    os.environ.pop("HF_HUB_OFFLINE", None)
    os.environ.pop("HF_TOKEN", None)
    try:
        import soundfile
        import torch
        from transformers import AutoModel, pipeline

        import hf_tts
        from hf_tts.hub.push import push_folder
        from hf_tts.synthesis import plot_mel

        timings["start registry + imports"] = time.perf_counter() - started
        print(f"local registry: {url} (root {scratch / 'registry'})")

        step = time.perf_counter()
        work = scratch / "work"
        work.mkdir()
        finetunes = build_finetunes(work, args.seed)
        repo_ids = []
        for folder in finetunes:
            repo_id = f"{NAMESPACE}/{folder.name}"
            commit = push_folder(folder, repo_id, commit_message=f"Add {folder.name}")
            repo_ids.append(repo_id)
            print(f"pushed {folder.name} -> {url}/{repo_id} @ {commit.oid[:12]}")
        timings["build + push 2 fine-tunes"] = time.perf_counter() - step

        step = time.perf_counter()
        merged_id = f"{NAMESPACE}/f5-merged"
        result = hf_tts.merge(
            repo_ids, weights=[0.6, 0.4], out_dir=out / "merged", overwrite=True, push_to_hub=merged_id
        )
        timings["merge 0.6/0.4 + push"] = time.perf_counter() - step
        print(f"merged {' + '.join(repo_ids)} -> {result.path} and {result.report.commit_url}")
        from huggingface_hub import HfApi

        merged_files = HfApi().list_repo_files(merged_id)

        step = time.perf_counter()
        merged = AutoModel.from_pretrained(merged_id, dtype=torch.float32)
        parents = [AutoModel.from_pretrained(repo_id, dtype=torch.float32).state_dict() for repo_id in repo_ids]
        error = max(
            (value - (0.6 * parents[0][key] + 0.4 * parents[1][key])).abs().max().item()
            for key, value in merged.state_dict().items()
            if value.is_floating_point()
        )
        timings["load by repo id (3 models)"] = time.perf_counter() - step
        print(f"loaded {merged_id}: {type(merged).__name__}, max |merged - (0.6a + 0.4b)| = {error:.2e}")

        step = time.perf_counter()
        speak = pipeline("zero-shot-text-to-speech", model=merged_id, device="cpu")
        rate = merged.config.sampling_rate
        load_pipeline_seconds = time.perf_counter() - step
        step = time.perf_counter()
        speech = speak(
            TEXT,
            ref_audio=reference_voice(rate),
            ref_text=REF_TEXT,
            sampling_rate=rate,
            nfe_step=args.nfe_step,
            seed=args.seed,
        )
        synthesis_seconds = time.perf_counter() - step
        audio = speech["audio"]
        audio_seconds = audio.size / speech["sampling_rate"]
        timings["pipeline from repo id"] = load_pipeline_seconds
        timings[f"synthesize ({args.nfe_step} steps)"] = synthesis_seconds
        soundfile.write(out / "speech.wav", audio, speech["sampling_rate"])
        mel = merged.mel_spec(torch.from_numpy(audio)[None])[0].numpy()
        plot_mel(mel, out / "mel.png", title=f"{merged_id}: {TEXT!r}")

        step = time.perf_counter()
        HfApi().upload_folder(
            repo_id=merged_id,
            folder_path=out,
            path_in_repo="samples",
            allow_patterns=["speech.wav", "mel.png"],
            commit_message="Add a speech sample and its mel spectrogram",
        )
        page_url = f"{url}/{merged_id}"
        skipped = screenshot(page_url, out / "registry.png")
        timings["samples + page screenshot"] = time.perf_counter() - step

        print()
        print("summary")
        print(
            f"  registry      {url} ({'kept running, see below' if args.serve else 'stopped at exit; --serve keeps it'})"
        )
        print(f"  fine-tunes    {', '.join(repo_ids)}")
        print(f"  merge         {url}/{merged_id} (linear 0.6/0.4), one commit: {', '.join(merged_files)}")
        print(f"  speech        {out / 'speech.wav'}: {audio_seconds:.2f} s at {speech['sampling_rate']} Hz")
        print(f"  mel picture   {out / 'mel.png'}")
        print(f"  model page    {page_url}  (files: {page_url}/tree/main, history: {page_url}/commits/main)")
        print(f"  screenshot    {out / 'registry.png'}" if skipped is None else f"  screenshot    skipped: {skipped}")
        print(f"  real-time factor {synthesis_seconds / audio_seconds:.3f} (synthesis seconds / audio seconds, CPU)")
        for name, seconds in timings.items():
            print(f"  {name:<28}{seconds:7.2f} s")
        print(f"  {'total':<28}{time.perf_counter() - started:7.2f} s")
        print("  (random weights: the audio shows the pipeline, it is not intelligible speech)")
        if args.serve:
            print(f"\nserving {url} until Ctrl-C: open {page_url}", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
    finally:
        registry.terminate()
        registry.wait(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
