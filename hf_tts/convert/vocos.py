"""Reader of upstream Vocos folders (`charactr/vocos-mel-24khz` layout: `config.yaml` + `pytorch_model.bin`).

Upstream builds its modules from `config.yaml` class paths (`feature_extractor`, `backbone`, `head`, each with
`init_args`); the state dict holds the weights plus three buffers (the STFT window, the mel filterbank, the ISTFT
window) that `VocosModel` recomputes. Those buffers are checked against the recomputed ones, so a checkpoint built
with other mel settings is refused instead of silently producing other audio.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from hf_tts.errors import CheckpointMismatchError, InputError
from hf_tts.file_utils import MAX_YAML_BYTES, atomic_output_dir, check_output_target, load_torch_checkpoint, load_yaml
from hf_tts.modeling_utils import allow_large_models, check_model_size
from hf_tts.models.vocos.configuration_vocos import VocosConfig
from hf_tts.models.vocos.modeling_vocos import VocosModel

UPSTREAM_CLASSES = {
    "feature_extractor": "vocos.feature_extractors.MelSpectrogramFeatures",
    "backbone": "vocos.models.VocosBackbone",
    "head": "vocos.heads.ISTFTHead",
}
# The init_args each upstream class takes (vocos 0.1.0); any other key is a variant this model does not implement.
UPSTREAM_INIT_ARGS = {
    "feature_extractor": {"sample_rate", "n_fft", "hop_length", "n_mels", "padding"},
    "backbone": {"input_channels", "dim", "intermediate_dim", "num_layers", "layer_scale_init_value"}
    | {"adanorm_num_embeddings"},
    "head": {"dim", "n_fft", "hop_length", "padding"},
}
# Upstream buffers -> the buffer of VocosModel that recomputes them.
RECOMPUTED_BUFFERS = {
    "feature_extractor.mel_spec.spectrogram.window": "feature_extractor.mel.window",
    "feature_extractor.mel_spec.mel_scale.fb": "feature_extractor.mel.mel_filters",
    "head.istft.window": "head.istft.window",
}
# The filterbank is float32 from two different float64 derivations (torchaudio vs transformers.audio_utils).
BUFFER_TOLERANCE = 1e-4


def _read_yaml_config(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            text = handle.read(MAX_YAML_BYTES + 1)
    except OSError as error:
        raise InputError(f"{path} cannot be read: {error.strerror or error}") from error
    raw = load_yaml(text, str(path))  # no aliases or tags, bounded size and depth
    if not isinstance(raw, dict):
        raise InputError(f"{path} must be a mapping with feature_extractor / backbone / head entries")
    if "feature_extractor" not in raw and isinstance(raw.get("model"), dict):
        raise InputError(
            f"{path} is a Vocos training config (model: vocos.experiment.*); give the folder of a released vocoder "
            "(its inference config.yaml with top-level feature_extractor / backbone / head, plus pytorch_model.bin), "
            "e.g. charactr/vocos-mel-24khz"
        )
    sections = {}
    for section, class_path in UPSTREAM_CLASSES.items():
        entry = raw.get(section)
        if not isinstance(entry, dict) or "class_path" not in entry:
            raise InputError(f"{path}: missing the {section!r} entry (with class_path and init_args)")
        if not isinstance(entry["class_path"], str) or entry["class_path"] != class_path:
            raise InputError(
                f"{path}: {section}.class_path is {entry['class_path']!r}; only the mel Vocos ({class_path}) is "
                "supported (EnCodec-feature and IMDCT variants are not)"
            )
        init_args = entry.get("init_args") or {}
        if not isinstance(init_args, dict):
            raise InputError(f"{path}: {section}.init_args must be a mapping, got {type(init_args).__name__}")
        unknown = sorted(str(key) for key in set(init_args) - UPSTREAM_INIT_ARGS[section])
        if unknown:
            raise InputError(f"{path}: {section}.init_args has keys this converter does not implement: {unknown}")
        sections[section] = init_args
    return sections


def vocos_config_from_yaml(path: str | os.PathLike) -> VocosConfig:
    """Translate upstream's `config.yaml` into a `VocosConfig` (refusing variants the model does not implement)."""
    path = Path(path)
    sections = _read_yaml_config(path)
    features, backbone, head = sections["feature_extractor"], sections["backbone"], sections["head"]
    if backbone.get("adanorm_num_embeddings") is not None:
        raise InputError(f"{path}: backbone.adanorm_num_embeddings is set (EnCodec-conditioned Vocos); not supported")
    feature_stft = (features.get("n_fft", 1024), features.get("hop_length", 256))
    head_stft = (head.get("n_fft"), head.get("hop_length"))
    if feature_stft != head_stft:
        raise InputError(
            f"{path}: feature_extractor (n_fft, hop_length) {feature_stft} differs from the head's {head_stft}"
        )
    if head.get("dim") != backbone.get("dim"):
        raise InputError(f"{path}: head.dim ({head.get('dim')}) must equal backbone.dim ({backbone.get('dim')})")
    if features.get("n_mels", 100) != backbone.get("input_channels"):
        raise InputError(
            f"{path}: backbone.input_channels ({backbone.get('input_channels')}) must equal feature_extractor.n_mels "
            f"({features.get('n_mels', 100)})"
        )
    try:
        return VocosConfig(
            sampling_rate=features.get("sample_rate", 24000),
            n_mels=features.get("n_mels", 100),
            n_fft=head["n_fft"],
            hop_length=head["hop_length"],
            feature_padding=features.get("padding", "center"),
            dim=backbone["dim"],
            intermediate_dim=backbone["intermediate_dim"],
            num_layers=backbone["num_layers"],
            layer_scale_init_value=backbone.get("layer_scale_init_value"),
            istft_padding=head.get("padding", "same"),
        )
    except KeyError as error:
        raise InputError(f"{path}: missing init_args key {error}") from error
    except InputError as error:
        raise InputError(f"{path}: {error}") from error


def _split_buffers(state_dict: dict[str, torch.Tensor], model: VocosModel, source: Path) -> dict[str, torch.Tensor]:
    """Drop the recomputed buffers from `state_dict` after checking each equals the model's own."""
    own = dict(model.named_buffers())
    weights = dict(state_dict)
    for upstream_key, own_key in RECOMPUTED_BUFFERS.items():
        stored = weights.pop(upstream_key, None)
        if stored is None:
            continue
        expected = own[own_key]
        if stored.shape != expected.shape or (stored.float() - expected).abs().max() > BUFFER_TOLERANCE:
            raise CheckpointMismatchError(
                f"{source}: {upstream_key} differs from the window / mel filterbank that config.yaml implies; "
                "this checkpoint was not built with the standard Vocos mel front end"
            )
    return weights


def load_upstream_vocos(src_dir: str | os.PathLike, *, allow_large: bool = False) -> VocosModel:
    """Build a `VocosModel` from an upstream folder (`config.yaml` + `pytorch_model.bin`), fp32, eval mode. The
    model size `config.yaml` implies is checked before the weights are read (`allow_large` lifts the limit); every
    weight must be a finite floating-point tensor."""
    from hf_tts.convert.f5 import check_weight_tensor

    src_dir = Path(src_dir)
    if not src_dir.is_dir():
        raise InputError(f"Vocos source {src_dir} is not a folder (expected config.yaml + pytorch_model.bin)")
    config_path, weights_path = src_dir / "config.yaml", src_dir / "pytorch_model.bin"
    for required in (config_path, weights_path):
        if not required.is_file():
            raise InputError(f"{required} is missing; an upstream Vocos folder holds config.yaml and pytorch_model.bin")
    config = vocos_config_from_yaml(config_path)
    with allow_large_models(allow_large):
        check_model_size(VocosModel, config, source=str(config_path))
        state_dict = load_torch_checkpoint(weights_path)
        if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
            raise InputError(f"{weights_path} is not a plain state dict of tensors")
        for key, tensor in state_dict.items():
            check_weight_tensor(tensor, f"{weights_path}: weight {key}")
        model = VocosModel(config)
    weights = _split_buffers(state_dict, model, weights_path)
    own = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    found = {name: tuple(tensor.shape) for name, tensor in weights.items()}
    missing, unexpected = sorted(set(own) - set(found)), sorted(set(found) - set(own))
    reshaped = [
        f"{name} {found[name]} vs {own[name]}" for name in sorted(set(own) & set(found)) if found[name] != own[name]
    ]
    if missing or unexpected or reshaped:
        raise CheckpointMismatchError(
            f"{weights_path} does not fit {config_path}: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"other shape (checkpoint vs config) {reshaped[:3]}"
        )
    model.load_state_dict(weights)
    return model.float().eval()


def load_vocos(source: str | os.PathLike) -> VocosModel:
    """A vocoder from an upstream Vocos folder (`config.yaml`), a converted folder or a Hub repo id."""
    path = Path(source)
    if (path / "config.yaml").is_file() and not (path / "config.json").is_file():
        return load_upstream_vocos(path)
    if path.exists() and not (path / "config.json").is_file():
        raise InputError(
            f"{path} is neither an upstream Vocos folder (config.yaml + pytorch_model.bin) nor a converted one "
            "(config.json + model.safetensors)"
        )
    try:
        model = VocosModel.from_pretrained(str(source), dtype=torch.float32)
    except (OSError, ValueError) as error:
        raise InputError(f"could not load a Vocos vocoder from {source}: {error}") from error
    return model.eval()


def convert_vocos_checkpoint(
    src_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    allow_large: bool = False,
    dtype: str = "float32",
) -> VocosModel:
    """Convert an upstream Vocos folder into a `save_pretrained` folder at `out_dir` (written atomically), with
    weights in `dtype` (`hf_tts.convert.f5.SAVE_DTYPES`). The output path is checked before anything is read, the
    whole model before anything is written."""
    from hf_tts.convert.f5 import cast_for_saving, check_save_dtype
    from hf_tts.hub.cards import write_model_card

    inputs = [src_dir]
    check_save_dtype(dtype)
    check_output_target(out_dir, inputs=inputs, overwrite=overwrite, kind="dir")
    model = load_upstream_vocos(src_dir, allow_large=allow_large)
    cast_for_saving(model, dtype, str(src_dir))
    with atomic_output_dir(out_dir, overwrite=overwrite, inputs=inputs) as staging:
        model.save_pretrained(staging)
        weights = Path(src_dir) / "pytorch_model.bin"
        write_model_card(
            staging, kind="vocos", config=model.config, sources=[weights], model_id=f"./{Path(out_dir).absolute().name}"
        )
        # Everything in staging is this run's: the card writer's temporary file is private (0600).
    return model


__all__ = ["convert_vocos_checkpoint", "load_upstream_vocos", "load_vocos", "vocos_config_from_yaml"]
