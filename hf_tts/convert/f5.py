"""Upstream F5-TTS / E2-TTS checkpoints -> `save_pretrained` folders of `F5TTSModel` / `E2TTSModel`.

Upstream layouts read here (SWivid/F5-TTS):
- released `.safetensors`: the EMA state dict, `ema_model.transformer.*` plus `initted` and `step`;
- training `.pt`: `{"model_state_dict", "ema_model_state_dict", "optimizer_state_dict", "update"|"step", ...}`;
- pruned files: the raw EMA (or online) state dict as `.safetensors`, or `{"ema_model_state_dict": ...}` as `.pt`.
Keys are upstream's with `transformer.` renamed `backbone.`; `ema_model.` is stripped; the EMA bookkeeping and the
mel buffers of old checkpoints are dropped, and so is `rotary_embed.inv_freq` (the model recomputes it) after checking
it holds the standard frequencies.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging

from hf_tts.errors import CheckpointMismatchError, InputError
from hf_tts.file_utils import (
    atomic_output_dir,
    check_finite,
    check_output_target,
    load_torch_checkpoint,
    read_safetensors_header,
    read_small_document,
)
from hf_tts.modeling_utils import allow_large_models, check_model_size
from hf_tts.models.checkpoint_check import check_weight_shapes, expected_state_shapes, summarize_weights
from hf_tts.models.e2.configuration_e2 import E2TTSConfig
from hf_tts.models.f5.configuration_f5 import F5TTSConfig

logger = logging.get_logger(__name__)

FlowMatchingConfig = F5TTSConfig | E2TTSConfig

BACKBONE_CONFIGS: dict[str, type[FlowMatchingConfig]] = {"DiT": F5TTSConfig, "UNetT": E2TTSConfig}
# Upstream bookkeeping that is not model weights.
_NON_WEIGHT_KEYS = {"initted", "step", "update"}
# Upstream `model.arch` keys that only pick a runtime kernel or training trick, not the weights or the maths.
_RUNTIME_ARCH_KEYS = {"attn_backend", "checkpoint_activations"}
# Upstream `model.mel_spec` key -> config field.
_MEL_SPEC_FIELDS = {
    "target_sample_rate": "sampling_rate",
    "n_mel_channels": "mel_dim",
    "hop_length": "hop_length",
    "win_length": "win_length",
    "n_fft": "n_fft",
    "mel_spec_type": "mel_spec_type",
}
# Upstream `model.tokenizer` -> tokenizer_type ("custom" is a vocab path given separately, used with pinyin).
_TOKENIZERS = {"pinyin": "pinyin", "char": "char", "custom": "pinyin"}


def model_class_for(config: FlowMatchingConfig) -> type[torch.nn.Module]:
    """`F5TTSModel` or `E2TTSModel` for a config (imported late: the models import nothing from here)."""
    if isinstance(config, E2TTSConfig):
        from hf_tts.models.e2.modeling_e2 import E2TTSModel

        return E2TTSModel
    from hf_tts.models.f5.modeling_f5 import F5TTSModel

    return F5TTSModel


def detect_family(state_dict_or_shapes: dict) -> str | None:
    """ "F5" (DiT), "E2" (UNetT) or None, from backbone weights (tensors or shapes; `backbone.`/`transformer.` keys)."""
    shapes = {key: tuple(getattr(value, "shape", value)) for key, value in state_dict_or_shapes.items()}
    return {"hf_tts_f5": "F5", "hf_tts_e2": "E2"}.get(summarize_weights(shapes).model_type)


def _config_from_upstream_model_block(
    block: dict, source: Path, name: Any, overrides: dict[str, Any] | None = None
) -> FlowMatchingConfig:
    """Config from upstream's YAML `model:` block (or the fixtures' arch.json, which has the same keys)."""
    if not isinstance(block, dict) or "backbone" not in block or not isinstance(block.get("arch"), dict):
        raise InputError(
            f"arch file {source} has no upstream model block: expected `backbone` (DiT or UNetT) and an `arch` "
            "mapping (a YAML under `model:` as in upstream's src/f5_tts/configs, or a JSON with the same keys)"
        )
    backbone = block["backbone"]
    if not isinstance(backbone, str) or backbone not in BACKBONE_CONFIGS:
        raise InputError(
            f"arch file {source}: backbone {backbone!r} is not supported; supported: {', '.join(BACKBONE_CONFIGS)}"
        )
    config_class = BACKBONE_CONFIGS[backbone]
    fields = {key: value for key, value in block["arch"].items() if key not in _RUNTIME_ARCH_KEYS}
    if fields.pop("text_embedding_average_upsampling", False):
        raise InputError(f"arch file {source}: text_embedding_average_upsampling is not supported")
    mel_spec = block.get("mel_spec") or {}
    if not isinstance(mel_spec, dict):
        raise InputError(f"arch file {source}: mel_spec must be a mapping, got {type(mel_spec).__name__}")
    for key, value in mel_spec.items():
        if key not in _MEL_SPEC_FIELDS:
            raise InputError(f"arch file {source}: unknown mel_spec key {key!r}; known: {', '.join(_MEL_SPEC_FIELDS)}")
        field = _MEL_SPEC_FIELDS[key]
        if field in fields and fields[field] != value:
            raise InputError(f"arch file {source}: mel_spec.{key} = {value!r} but arch.{field} = {fields[field]!r}")
        fields[field] = value
    if "tokenizer" in block:
        tokenizer = block["tokenizer"]
        if not isinstance(tokenizer, str) or tokenizer not in _TOKENIZERS:
            raise InputError(
                f"arch file {source}: tokenizer {tokenizer!r} is not supported; supported: {', '.join(_TOKENIZERS)}"
            )
        fields["tokenizer_type"] = _TOKENIZERS[tokenizer]
    known = set(config_class.__dataclass_fields__)
    unknown = sorted(str(key) for key in set(fields) - known)
    if unknown:
        raise InputError(f"arch file {source}: unknown arch key(s) {', '.join(unknown)} for the {backbone} backbone")
    if name is None:
        # No variant name in the file: name it after the upstream variant its flags follow.
        family = "E2TTS" if backbone == "UNetT" else "F5TTS_v1" if fields.get("text_mask_padding", True) else "F5TTS"
        name = f"{family}_custom"
    try:
        return config_class(**{**fields, "architecture": str(name), **(overrides or {})})
    except InputError as error:
        raise InputError(f"arch file {source}: {error}") from error


def resolve_arch(arch: str | os.PathLike, *, text_num_embeds: int | None = None) -> FlowMatchingConfig:
    """The config of `arch`: a preset name ("F5TTS_v1_Base", "E2TTS_Base", ...), an upstream YAML config file (its
    `model:` block) or a JSON with `backbone`/`arch`/`mel_spec` keys. `text_num_embeds` is the vocab size (upstream
    injects it from the vocab); a file that states a different one is refused."""
    presets = {**{name: F5TTSConfig for name in F5TTSConfig.presets}, **{n: E2TTSConfig for n in E2TTSConfig.presets}}
    overrides = {} if text_num_embeds is None else {"text_num_embeds": text_num_embeds}
    if str(arch) in presets:
        return presets[str(arch)].from_preset(str(arch), **overrides)
    path = Path(arch)
    if not path.is_file():
        raise InputError(
            f"--arch {arch!r} is neither a preset ({', '.join(presets)}) nor an existing upstream YAML/JSON config"
        )
    document = read_small_document(path, f"arch file {path}")
    if not isinstance(document, dict):
        raise InputError(f"arch file {path} must hold a mapping, got {type(document).__name__}")
    block = document.get("model", document)
    if isinstance(block, dict) and isinstance(block.get("arch"), dict) and text_num_embeds is not None:
        stated = block["arch"].get("text_num_embeds", text_num_embeds)
        if stated != text_num_embeds:
            raise CheckpointMismatchError(
                f"arch file {path} says text_num_embeds {stated!r} but the vocab has {text_num_embeds} tokens; "
                "use the vocab.txt the model was trained with"
            )
    return _config_from_upstream_model_block(
        block, path, block.get("name") if isinstance(block, dict) else None, overrides
    )


def select_upstream_state(
    checkpoint: Mapping[str, Any], path: Path, use_online_weights: bool, *, online_flag: str = "--use-online-weights"
) -> Mapping[str, Any]:
    """The CFM-level state dict (`transformer.*`, maybe `mel_spec.*`) inside an opened upstream file, EMA unless
    asked: a `.safetensors` export is that state dict itself; a `.pt` holds it under `ema_model_state_dict` /
    `model_state_dict` or is a raw state dict. Only keys are looked at, so `checkpoint` may be lazily mapped.
    `online_flag` is how the calling command asks for the online weights (messages name it)."""
    if path.suffix.lower() == ".safetensors":
        if use_online_weights and any(key.startswith("ema_model.") for key in checkpoint):
            raise InputError(
                f"{path} holds only EMA weights (ema_model.*); {online_flag} needs a training checkpoint "
                "(.pt with model_state_dict)"
            )
        return checkpoint
    if not isinstance(checkpoint, dict):
        raise InputError(f"{path} holds a {type(checkpoint).__name__}, not an upstream checkpoint dict")
    wanted, other = ("model_state_dict", "ema_model_state_dict")
    if not use_online_weights:
        wanted, other = other, wanted
    if wanted in checkpoint:
        return checkpoint[wanted]
    if any(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        if use_online_weights and any(key.startswith("ema_model.") for key in checkpoint):
            raise InputError(f"{path} holds only EMA weights (ema_model.*); drop {online_flag}")
        return checkpoint  # a raw state dict
    hint = f" (pass {online_flag} to use them)" if other == "model_state_dict" and other in checkpoint else ""
    raise InputError(
        f"{path} has no {wanted}; its top-level keys are {', '.join(sorted(map(str, checkpoint)))[:200]}{hint}"
    )


def _read_checkpoint(path: Path, use_online_weights: bool) -> Mapping[str, Any]:
    """The CFM-level state dict of an upstream file, read into memory."""
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist or is not a file")
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        read_safetensors_header(path)  # strict: a damaged header is named here, before safetensors reads it
        try:
            checkpoint = load_file(path)
        except (SafetensorError, OSError, ValueError) as error:
            raise InputError(f"{path} is not a readable safetensors file: {error}") from error
    else:
        checkpoint = load_torch_checkpoint(path)
    return select_upstream_state(checkpoint, path, use_online_weights)


def _check_rotary_frequencies(key: str, inv_freq: torch.Tensor) -> None:
    """Warn when a stored `inv_freq` is not upstream's 1/10000^(2i/d): the model always recomputes the standard
    frequencies (upstream builds them the same way; the buffer is never trained), so only an edited file differs."""
    dim_head = 2 * inv_freq.numel()
    standard = 1.0 / (10000 ** (torch.arange(0, dim_head, 2, dtype=torch.float64) / dim_head))
    # rtol 2e-3 admits checkpoints saved in fp16.
    if not torch.allclose(inv_freq.double(), standard, rtol=2e-3, atol=0):
        difference = (inv_freq.double() - standard).abs().max().item()
        logger.warning(
            f"{key} differs from the standard rotary frequencies 1/10000^(2i/{dim_head}) by up to {difference:.3g}; "
            "the converted model uses the standard ones"
        )


def upstream_f5_key_map(state: Mapping[str, Any], path: Path) -> dict[str, str]:
    """`F5TTSModel`/`E2TTSModel` key (`backbone.*`) -> key in the upstream state dict `state` (from
    `select_upstream_state`); bookkeeping, mel buffers and `rotary_embed.inv_freq` (checked against the standard
    frequencies) get no entry. Values are type-checked when `state` is a dict (what torch.load gives); a lazily mapped
    safetensors file holds only tensors, and of it only the small rotary buffer is read."""
    ddp = bool(state) and all(
        key.startswith("module.") for key in state
    )  # saved from a DistributedDataParallel wrapper
    names: dict[str, str] = {}
    unexpected: list[str] = []
    for key in state:
        shown = key.removeprefix("module.") if ddp else key
        name = shown.removeprefix("ema_model.")
        if name in _NON_WEIGHT_KEYS or name.startswith("mel_spec."):
            continue
        if not name.startswith("transformer."):
            unexpected.append(shown)
            continue
        if isinstance(state, dict) and not isinstance(state[key], torch.Tensor):
            raise InputError(f"{path}: {shown} is a {type(state[key]).__name__}, not a tensor")
        if name == "transformer.rotary_embed.inv_freq":
            _check_rotary_frequencies(shown, state[key])
            continue
        names["backbone." + name.removeprefix("transformer.")] = key
    if unexpected:
        raise InputError(
            f"{path} has {len(unexpected)} key(s) outside upstream's CFM layout (e.g. {unexpected[0]!r}); "
            "expected ema_model.transformer.* or transformer.* weights"
        )
    if not names:
        raise InputError(f"{path} holds no F5-TTS/E2-TTS weights (no transformer.* keys)")
    return names


def load_upstream_f5_state_dict(
    checkpoint: str | os.PathLike, *, use_online_weights: bool = False
) -> dict[str, torch.Tensor]:
    """Read an upstream F5/E2 checkpoint (any layout above) as `F5TTSModel`/`E2TTSModel` keys (`backbone.*`).

    The EMA weights are read unless `use_online_weights` (training `.pt` files only). Every weight must be a
    floating-point tensor holding finite values (an integer tensor or a NaN would be copied into the model without
    a word otherwise). Keys are not yet checked against an architecture; see `check_weight_shapes`.
    """
    path = Path(checkpoint)
    state = _read_checkpoint(path, use_online_weights)
    weights = {name: state[key] for name, key in upstream_f5_key_map(state, path).items()}
    for name, tensor in weights.items():
        check_weight_tensor(tensor, f"{path}: weight {name}")
    return weights


def check_weight_tensor(tensor: Any, what: str) -> None:
    """Refuse a weight that is not a floating-point tensor of finite values; `what` names the file and key."""
    if not isinstance(tensor, torch.Tensor):
        raise InputError(f"{what} is a {type(tensor).__name__}, not a tensor")
    if not tensor.is_floating_point():
        raise InputError(f"{what} has dtype {tensor.dtype}, expected a floating-point tensor; is the file damaged?")
    check_finite(tensor, what)


def check_state_finite(model: torch.nn.Module, what: str) -> None:
    """Every parameter and persistent buffer of `model` finite, before it is written (`what` names the model)."""
    for key, tensor in model.state_dict().items():
        check_finite(tensor, f"{what}: {key}")


# dtypes `hf-tts convert --dtype` saves in; float32 (the default) keeps upstream's values bit for bit.
SAVE_DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")


def check_save_dtype(dtype: str) -> None:
    """Refuse a save dtype other than `SAVE_DTYPES` before any work (the Python API has no argparse choices)."""
    if dtype not in SAVE_DTYPES:
        raise InputError(f"--dtype {dtype!r} is not one of {', '.join(SAVE_DTYPES)}")


def cast_for_saving(model: torch.nn.Module, dtype: str, what: str) -> None:
    """Cast `model` in place to the dtype its folder is saved in (config.json records it, so `from_pretrained`
    loads it back in that dtype). Half precision halves the folder; a weight beyond float16's range would be saved
    as inf, so it is refused by name instead."""
    check_save_dtype(dtype)
    if dtype == "float32":
        return
    for key, tensor in model.state_dict().items():
        if tensor.is_floating_point() and dtype == "float16" and bool((tensor.abs() > 65504).any()):
            raise InputError(
                f"{what}: {key} holds values beyond float16's range (65504); save it with --dtype bfloat16 or float32"
            )
    model.to(getattr(torch, dtype))


def convert_f5_checkpoint(
    checkpoint: str | os.PathLike,
    arch: str | os.PathLike,
    vocab: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    use_online_weights: bool = False,
    overwrite: bool = False,
    vocoder: str | os.PathLike | None = None,
    allow_large: bool = False,
    dtype: str = "float32",
) -> Path:
    """Convert an upstream F5-TTS/E2-TTS checkpoint into a folder that `AutoModel.from_pretrained` and
    `AutoTokenizer.from_pretrained` load. The output path is checked first (never an input, the current folder or
    a folder that is not a model), then the vocab, the arch, the model size (`allow_large` lifts the
    `MAX_MODEL_PARAMETERS` limit) and every key, shape, dtype and value of the checkpoint; any problem raises a
    one-line InputError and nothing is written. `vocoder` (a Vocos folder, upstream or converted) is attached and
    saved with the model, with its processor, so the folder alone gives speech. `dtype` (`SAVE_DTYPES`) is the
    precision the weights are saved in. Returns the folder."""
    from hf_tts.convert.vocos import load_vocos
    from hf_tts.hub.cards import kind_for_config, write_model_card
    from hf_tts.processing import F5FeatureExtractor, F5Processor
    from hf_tts.tokenization_f5 import F5Tokenizer, read_vocab_file

    inputs = [checkpoint, vocab, vocoder, arch if Path(arch).exists() else None]
    check_save_dtype(dtype)
    check_output_target(out_dir, inputs=inputs, overwrite=overwrite, kind="dir")
    with allow_large_models(allow_large):
        vocab_tokens = read_vocab_file(vocab)  # checked before the (large) checkpoint is read
        config = resolve_arch(arch, text_num_embeds=len(vocab_tokens))
        model_class = model_class_for(config)
        check_model_size(model_class, config, source=f"--arch {arch}")
        vocos = load_vocos(vocoder) if vocoder is not None else None
        state = load_upstream_f5_state_dict(checkpoint, use_online_weights=use_online_weights)
        arch_label = f"--arch {arch}" if str(arch) == config.architecture else f"--arch {arch} ({config.architecture})"
        check_weight_shapes(
            {key: value.shape for key, value in state.items()},
            expected_state_shapes(model_class, config),
            config,
            arch_label=arch_label,
            vocab_label=str(vocab),
        )
        with torch.device("meta"):
            model = model_class(config)
        model.load_state_dict(state, strict=True, assign=True)
        if vocos is not None:
            model.attach_vocoder(vocos)
            check_state_finite(vocos, f"vocoder {vocoder}")
        cast_for_saving(model, dtype, str(checkpoint))
        tokenizer = F5Tokenizer(str(vocab), tokenizer_type=config.tokenizer_type)
        extractor = F5FeatureExtractor(sampling_rate=config.sampling_rate, hop_length=config.hop_length)
        # Everything is validated; only writing is left.
        with atomic_output_dir(out_dir, overwrite=overwrite, inputs=inputs) as staging:
            model.save_pretrained(staging)
            F5Processor(extractor, tokenizer).save_pretrained(staging)
            write_model_card(
                staging,
                kind=kind_for_config(config),
                config=config,
                sources=[checkpoint, vocab],
                model_id=f"./{Path(out_dir).absolute().name}",
            )
            # Everything in staging is this run's: the card writer's temporary file is private (0600).
    return Path(out_dir)
