"""Regenerates `tests/data/upstream_variants/` from upstream F5-TTS: tiny models for the flag combinations that
`../shared/fixtures/upstream/` (released layouts only) does not cover, with upstream's own outputs.

How the committed files were made (never imported by `hf_tts` or the tests; needs upstream's package):

    .bench_venv/bin/python scripts/make_upstream_variant_fixtures.py tests/data/upstream_variants

`.bench_venv` holds PyPI `f5-tts` 1.1.20 (SWivid/F5-TTS 2ae2c9b) with torch on CPU; upstream's model code is imported
from there with the training-only imports stubbed (as `scripts/_upstream_runner.py` does). Per variant the folder holds:
- `model_ema.safetensors`: upstream's released layout (`ema_model.transformer.*` + `initted` + `step`), every weight
  random (zero-initialised adaLN layers included), fp32;
- `model_train.pt` (first variant only): upstream trainer's layout (`model_state_dict` = EMA + 0.001,
  `ema_model_state_dict`, `optimizer_state_dict`, `scheduler_state_dict`, `update`);
- `arch.yaml`: upstream's `src/f5_tts/configs/F5TTS_v1_Base.yaml` with the `model:` block replaced;
- `cases.safetensors`: backbone inputs and upstream `transformer(...)` outputs, plus `CFM.sample(...)` outputs
  (`sample_<name>`) for the settings listed in `cases.json`, and `sample_euler9_alone{0,1}`: each sample of the
  `euler9_batch` case sampled by itself (batch 1, prompt cut to its `lens`); all computed in fp32 on CPU.
`vocab.txt` is a small pinyin/char vocab shared by all variants; `cases.json` also holds upstream's token ids
(`convert_char_to_pinyin` + `list_str_to_idx`, and `list_str_to_idx` of raw characters for the char model).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _upstream_runner import _stub_training_only_imports  # noqa: E402

SMALL = dict(dim=16, depth=2, heads=2, dim_head=8, ff_mult=2, mel_dim=24)
DIT = dict(SMALL, text_dim=16, conv_layers=1, text_mask_padding=True, pe_attn_head=None)
UNET = dict(SMALL, text_mask_padding=False, pe_attn_head=1)
# name -> (backbone, arch, tokenizer); keys beyond the released configs are the point of each variant.
VARIANTS: dict[str, tuple[str, dict, str]] = {
    "dit_qk_norm": ("DiT", dict(DIT, qk_norm="rms_norm"), "pinyin"),
    "dit_long_skip": ("DiT", dict(DIT, long_skip_connection=True), "pinyin"),
    "dit_attn_mask": ("DiT", dict(DIT, attn_mask_enabled=True), "pinyin"),
    "dit_v1_pe1": ("DiT", dict(DIT, pe_attn_head=1), "pinyin"),
    "dit_v0_full_rope": ("DiT", dict(DIT, text_mask_padding=False), "pinyin"),
    "dit_v0": ("DiT", dict(DIT, text_mask_padding=False, pe_attn_head=1), "pinyin"),
    "dit_no_conv_text24": ("DiT", dict(DIT, conv_layers=0, text_dim=24), "pinyin"),
    "dit_dim_head16": ("DiT", dict(DIT, dim_head=16, heads=3, conv_layers=2), "char"),
    "unet_depth4_concat": ("UNetT", dict(UNET, depth=4), "pinyin"),
    "unet_add": ("UNetT", dict(UNET, skip_connect_type="add"), "pinyin"),
    "unet_none": ("UNetT", dict(UNET, skip_connect_type="none"), "pinyin"),
    "unet_text_conv": ("UNetT", dict(UNET, text_dim=16, conv_layers=1, text_mask_padding=True), "pinyin"),
}
# Sampling settings (CFM.sample keywords; "method" sets odeint_kwargs). Batch cases use two different prompt
# lengths and durations; every case is seeded (upstream re-seeds before each sample's noise).
SAMPLE_CASES: dict[str, dict] = {
    "euler9_batch": dict(batch=2, steps=9, cfg_strength=2.0, sway_sampling_coef=-1.0, method="euler"),
    "epss7": dict(batch=1, steps=7, cfg_strength=2.0, sway_sampling_coef=-1.0, method="euler"),
    "midpoint3_nosway": dict(batch=1, steps=3, cfg_strength=2.0, sway_sampling_coef=None, method="midpoint"),
    "nocfg4_batch": dict(batch=2, steps=4, cfg_strength=0.0, sway_sampling_coef=-1.0, method="euler"),
    "uniform6": dict(batch=1, steps=6, cfg_strength=1.5, sway_sampling_coef=0.5, method="euler", use_epss=False),
    "no_ref_audio": dict(batch=1, steps=4, cfg_strength=2.0, sway_sampling_coef=-1.0, method="euler", no_ref=True),
}
TEXTS = ["Hello world, 你好世界。", "It's 2 o'clock; 我们走吧!"]
SEED = 1234


def pinyin_tokens(texts: list[str]) -> list[list[str]]:
    from f5_tts.model.utils import convert_char_to_pinyin

    return convert_char_to_pinyin(texts)


def make_vocab(texts: list[str]) -> list[str]:
    """Space first (id 0 = unknown), then printable ASCII, the pinyin syllables and every other char of the texts."""
    tokens = [" "] + [chr(c) for c in range(33, 127)]
    for token in [t for ids in pinyin_tokens(texts) for t in ids] + [c for text in texts for c in text]:
        if token not in tokens:
            tokens.append(token)
    return tokens


def yaml_config(template: str, name: str, backbone: str, arch: dict, tokenizer: str) -> str:
    """Upstream's YAML with the model block replaced (text_num_embeds/mel_dim are injected by upstream, not set)."""

    def scalar(value) -> str:
        return "null" if value is None else str(value) if not isinstance(value, bool) else str(value)

    arch_lines = "".join(f"    {key}: {scalar(value)}\n" for key, value in arch.items() if key != "mel_dim")
    block = (
        f"model:\n  name: {name}\n  tokenizer: {tokenizer}\n  tokenizer_path: null\n  backbone: {backbone}\n"
        f"  arch:\n{arch_lines}  mel_spec:\n    target_sample_rate: 24000\n    n_mel_channels: {arch['mel_dim']}\n"
        "    hop_length: 256\n    win_length: 1024\n    n_fft: 1024\n    mel_spec_type: vocos\n"
        "  vocoder:\n    is_local: False\n    local_path: null\n\n"
    )
    return re.sub(r"model:\n(?:  .*\n|\n)*?(?=ckpts:)", lambda _: block, template)


def build_upstream(backbone: str, arch: dict, vocab_size: int, generator: torch.Generator):
    from f5_tts.model.backbones.dit import DiT
    from f5_tts.model.backbones.unett import UNetT
    from f5_tts.model.cfm import CFM

    model_class = DiT if backbone == "DiT" else UNetT
    transformer = model_class(**arch, text_num_embeds=vocab_size)
    model = CFM(transformer=transformer, mel_spec_kwargs={"n_mel_channels": arch["mel_dim"]}).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            # every weight random and non-zero; norms near 1 so activations stay in a sane range
            noise = torch.randn(parameter.shape, generator=generator) * 0.2
            parameter.copy_(1.0 + noise if name.endswith((".g", "norm.weight")) else noise)
    return model


def run_backbone(model, inputs: dict) -> dict[str, torch.Tensor]:
    transformer = model.transformer
    x, cond, text, time, mask = (inputs[k] for k in ("x", "cond", "text", "time", "mask"))
    return {
        "out_cond": transformer(x, cond, text, time, mask=mask),
        "out_drop_audio": transformer(x, cond, text, time, mask=mask, drop_audio_cond=True),
        "out_drop_all": transformer(x, cond, text, time, mask=mask, drop_audio_cond=True, drop_text=True),
        "out_nomask": transformer(x, cond, text, time),
        "out_cfg_infer": transformer(x, cond, text, time, mask=mask, cfg_infer=True),
    }


def run_sampling(model, inputs: dict) -> dict[str, torch.Tensor]:
    outputs = {}
    for name, case in SAMPLE_CASES.items():
        batch = case["batch"]
        model.odeint_kwargs = {"method": case["method"]}
        out, _ = model.sample(
            cond=inputs["prompt"][:batch],
            text=inputs["sample_text"][:batch],
            duration=inputs["duration"][:batch] if batch > 1 else int(inputs["duration"][0]),
            lens=inputs["lens"][:batch] if batch > 1 else None,
            steps=case["steps"],
            cfg_strength=case["cfg_strength"],
            sway_sampling_coef=case["sway_sampling_coef"],
            use_epss=case.get("use_epss", True),
            no_ref_audio=case.get("no_ref", False),
            seed=SEED,
        )
        outputs[f"sample_{name}"] = out
    # each sample of the batch cases alone (its own prompt length and duration): what batching must not change
    model.odeint_kwargs = {"method": "euler"}
    case = SAMPLE_CASES["euler9_batch"]
    for index in range(2):
        length = int(inputs["lens"][index])
        out, _ = model.sample(
            cond=inputs["prompt"][index : index + 1, :length],
            text=inputs["sample_text"][index : index + 1],
            duration=int(inputs["duration"][index]),
            steps=case["steps"],
            cfg_strength=case["cfg_strength"],
            sway_sampling_coef=case["sway_sampling_coef"],
            seed=SEED,
        )
        outputs[f"sample_euler9_alone{index}"] = out
    return outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    out: Path = parser.parse_args().out
    _stub_training_only_imports()
    from importlib.resources import files

    from f5_tts.model.utils import list_str_to_idx

    torch.set_grad_enabled(False)
    template = files("f5_tts").joinpath("configs/F5TTS_v1_Base.yaml").read_text()
    out.mkdir(parents=True, exist_ok=True)
    vocab = make_vocab(TEXTS)
    (out / "vocab.txt").write_text("".join(token + "\n" for token in vocab), encoding="utf-8")
    vocab_map = {token: index for index, token in enumerate(vocab)}
    pinyin_ids = list_str_to_idx(pinyin_tokens(TEXTS), vocab_map)
    char_ids = list_str_to_idx([list(text) for text in TEXTS], vocab_map)
    cases_json = {
        "texts": TEXTS,
        "pinyin_ids": pinyin_ids.tolist(),
        "char_ids": char_ids.tolist(),
        "seed": SEED,
        "sample_cases": SAMPLE_CASES,
        "upstream": "SWivid/F5-TTS 1.1.20 (PyPI f5-tts), CPU fp32",
    }
    (out / "cases.json").write_text(json.dumps(cases_json, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    for index, (name, (backbone, arch, tokenizer)) in enumerate(VARIANTS.items()):
        generator = torch.Generator().manual_seed(index)
        model = build_upstream(backbone, arch, len(vocab), generator)
        mel_dim, frames = arch["mel_dim"], 20
        ids = pinyin_ids if tokenizer == "pinyin" else char_ids
        inputs = {
            "x": torch.randn(2, frames, mel_dim, generator=generator),
            "cond": torch.randn(2, frames, mel_dim, generator=generator),
            "text": ids[:, :16],
            "time": torch.rand(2, generator=generator),
            "mask": torch.arange(frames)[None] < torch.tensor([[frames], [14]]),
            "prompt": torch.randn(2, 10, mel_dim, generator=generator),
            "sample_text": ids,
            "lens": torch.tensor([10, 6]),
            "duration": torch.tensor([30, 26]),
        }
        outputs = run_backbone(model, inputs)
        outputs.update(run_sampling(model, inputs))
        folder = out / name
        folder.mkdir(exist_ok=True)
        ema_state = {f"ema_model.{k}": v.contiguous() for k, v in model.state_dict().items()}
        save_file(
            {**ema_state, "initted": torch.tensor(True), "step": torch.tensor(100)},
            str(folder / "model_ema.safetensors"),
        )
        if index == 0:
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            torch.save(
                {
                    "model_state_dict": {k: v + 0.001 for k, v in model.state_dict().items()},
                    "optimizer_state_dict": optimizer.state_dict(),
                    "ema_model_state_dict": {**ema_state, "initted": torch.tensor(True), "step": torch.tensor(100)},
                    "scheduler_state_dict": {"last_epoch": 0},
                    "update": 100,
                },
                folder / "model_train.pt",
            )
        (folder / "arch.yaml").write_text(yaml_config(template, name, backbone, arch, tokenizer))
        tensors = {**inputs, **outputs}
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "cases.safetensors"))
        print(name, "ok")


if __name__ == "__main__":
    main()
