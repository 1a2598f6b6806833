"""Reader of audio2photoreal diffusion checkpoints (`checkpoints/diffusion/<name>/{args.json, model*.pt}`).

The `.pt` file is a bare `state_dict` of upstream's `FiLMTransformer`. It includes:
- the shared rotary `freqs` buffer duplicated under every layer: folded into the model's single non-persistent
  buffer after checking that every copy holds the standard frequencies;
- the frozen fairseq audio encoder (`audio_model.*`) and, for the face model, the lip regressor (`lip_model.*`),
  plus the guide transformer / VQ tokenizer (`transformer.*`, `tokenizer.*`) when present: not ported (the model
  takes precomputed `cond_features`); their keys are reported and dropped.
Sizes come from the weights themselves; `args.json` supplies what the weights cannot say (`heads`, the noise
schedule, the velocity-loss weight, the CFG drop rate) and is checked against them (`data_format`); variants that
cannot be ported (`unconstrained`, `not_rotary`) are refused with a clear error.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hf_tts.errors import CheckpointMismatchError, InputError
from hf_tts.file_utils import atomic_output_dir, check_output_target, load_torch_checkpoint, read_small_document
from hf_tts.layers.film import rotary_frequencies
from hf_tts.modeling_utils import allow_large_models, check_model_size
from hf_tts.models.cfg_motion.configuration_cfg_motion import CFGMotionConfig
from hf_tts.models.cfg_motion.modeling_cfg_motion import CFGMotionModel

# Upstream submodules that are not part of the denoiser: the frozen fairseq audio encoder and its torchaudio
# 48 -> 16 kHz resampler (whose sinc `kernel` buffer is persistent, so every real checkpoint has it), the face lip
# regressor, and the guide-pose predictor.
DROPPED_PREFIXES = ("audio_model.", "audio_resampler.", "lip_model.", "transformer.", "tokenizer.")
DATA_FORMATS = {"pose": "body", "face": "face"}
# The `--heads` default of upstream's parser, which it uses when args.json lacks the key.
UPSTREAM_DEFAULT_HEADS = 4
# upstream's args.json is about 2 KB; a bigger one is not read into memory.
MAX_ARGS_BYTES = 1 << 20

# Upstream key (regex) -> key under `denoiser.`; applied in order, first match wins.
KEY_MAP: list[tuple[str, str]] = [
    (r"^time_mlp\.1\.", "time_mlp."),
    (r"^to_time_cond\.0\.", "to_time_cond."),
    (r"^to_time_tokens\.0\.", "to_time_tokens."),
    (r"^null_pose_embed$", "null_keyframe_embed"),
    (r"^frame_cond_projection\.", "keyframe_projection."),
    (r"^frame_norm_cond\.", "keyframe_norm."),
    (r"^non_attn_cond_projection\.", "pooled_cond_projection."),
    (r"^post_pose_layers\.", "post_convs."),
    (r"^seqTransDecoder\.stack\.(\d+)\.multihead_attn2\.", r"decoder_layers.\1.keyframe_attn."),
    (r"^seqTransDecoder\.stack\.(\d+)\.multihead_attn\.", r"decoder_layers.\1.cross_attn."),
    (r"^seqTransDecoder\.stack\.(\d+)\.norm2a\.", r"decoder_layers.\1.norm_keyframe."),
    (r"^seqTransDecoder\.stack\.(\d+)\.film2a\.block\.1\.", r"decoder_layers.\1.film_keyframe.linear."),
    (r"^seqTransDecoder\.stack\.(\d+)\.film(\d)\.block\.1\.", r"decoder_layers.\1.film\2.linear."),
    (r"^seqTransDecoder\.stack\.", "decoder_layers."),
]
ROTARY_KEY = re.compile(r"(^|\.)rotary\.freqs$")


@dataclass
class A2PCheckpoint:
    config: CFGMotionConfig
    state_dict: dict[str, torch.Tensor]
    source_file: Path
    dropped_keys: list[str] = field(default_factory=list)
    folded_rotary_keys: list[str] = field(default_factory=list)


def find_checkpoint(source_dir: Path) -> Path:
    """The newest `model<steps>.pt` in an upstream model folder."""
    candidates = sorted(source_dir.glob("model*.pt"), key=lambda path: int(re.sub(r"\D", "", path.stem) or -1))
    if not candidates:
        raise InputError(f"{source_dir} holds no model*.pt checkpoint (expected upstream's model<steps>.pt)")
    return candidates[-1]


def rename_key(key: str) -> str:
    for pattern, replacement in KEY_MAP:
        if re.search(pattern, key):
            return "denoiser." + re.sub(pattern, replacement, key)
    return "denoiser." + key


def _require(state_dict: dict[str, torch.Tensor], key: str, source: Path) -> torch.Tensor:
    if key not in state_dict:
        raise CheckpointMismatchError(
            f"{source}: key {key!r} is missing; this is not an audio2photoreal FiLMTransformer"
        )
    return state_dict[key]


_MISSING = object()


def _arg(args: dict, name: str, kinds: tuple[type, ...], default: Any, args_path: Path) -> Any:
    """`args[name]` when it has one of `kinds` (a bool is never a number, a string never a bool or number);
    `default` when the key is missing. null counts as missing only when `default` is None (upstream's parser
    default is None then too)."""
    value = args.get(name, _MISSING)
    if value is _MISSING or (value is None and default is None):
        return default
    is_bool = isinstance(value, bool)
    if bool in kinds and is_bool or not is_bool and isinstance(value, tuple(k for k in kinds if k is not bool)):
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{args_path}: {name} must be a finite number, got {value!r}")
        return value
    expected = " or ".join(
        {bool: "true/false", int: "an integer", float: "a number", str: "a string"}[k] for k in kinds
    )
    raise InputError(f"{args_path}: {name} must be {expected}, got {json.dumps(value)[:80]}")


def config_from_upstream(
    args: dict, state_dict: dict[str, torch.Tensor], source: Path, *, allow_large: bool = False
) -> CFGMotionConfig:
    """The config of an upstream checkpoint: sizes from the weights (upstream ignores `--latent_dim` and hard-codes
    ff 1024, the 1998 null tokens and the 20 keyframe slots, but a retrained model may differ), flags from
    `args.json` read as upstream's `parse_and_load_from_model` reads them (a missing key takes the parser default,
    `diffusion_steps` is ignored: upstream always builds 1000 steps). Values of the wrong type (`"heads": "8"`,
    `"not_rotary": "false"`) and `heads` below 1 are refused rather than coerced."""
    args_path = source.parent / "args.json"
    if not isinstance(args, dict):
        raise InputError(f"{args_path} must hold a JSON object (upstream's saved arguments), got {type(args).__name__}")
    has_keyframes = "null_pose_embed" in state_dict
    data_format = _arg(args, "data_format", (str,), "pose" if has_keyframes else "face", args_path)
    if data_format not in DATA_FORMATS:
        raise InputError(f"{args_path}: data_format must be 'pose' or 'face', got {data_format!r}")
    if has_keyframes != (data_format == "pose"):
        raise CheckpointMismatchError(
            f"{args_path} says data_format={data_format!r} but the weights {'have' if has_keyframes else 'lack'} the "
            "body keyframe branch (null_pose_embed); is args.json from another model?"
        )
    if _arg(args, "unconstrained", (bool,), None, args_path) or _arg(args, "cond_mode", (str,), None, args_path) == (
        "no_cond"
    ):
        raise InputError(
            f"{args_path}: unconstrained (audio-free) models are not supported: upstream's unconditional branch "
            "cannot run (it crashes for both face and body), so no usable checkpoint of that kind exists"
        )
    if _arg(args, "not_rotary", (bool,), None, args_path):
        raise InputError(f"{args_path}: not_rotary=true is not supported, only the rotary variant (upstream's default)")
    noise_schedule = _arg(args, "noise_schedule", (str,), None, args_path) or "cosine"
    if noise_schedule not in ("cosine", "linear"):
        raise InputError(f"{args_path}: noise_schedule must be 'cosine' or 'linear', got {noise_schedule!r}")
    heads = _arg(args, "heads", (int,), UPSTREAM_DEFAULT_HEADS, args_path)
    if heads < 1:
        raise InputError(
            f"{args_path}: heads must be at least 1, got {heads} (upstream's parser default, used when the key is "
            f"missing, is {UPSTREAM_DEFAULT_HEADS}); fix args.json to the value the model was trained with"
        )
    lambda_vel = _arg(args, "lambda_vel", (int, float), None, args_path) or 0.0
    cond_mask_prob = _arg(args, "cond_mask_prob", (int, float), None, args_path)
    for key in ("input_projection.weight", "seqTransDecoder.stack.0.linear1.weight", "cond_projection.weight"):
        if _require(state_dict, key, source).ndim != 2:
            raise CheckpointMismatchError(f"{source}: {key} has shape {tuple(state_dict[key].shape)}, expected 2-D")
    for key in ("null_cond_embed", *(("null_pose_embed",) if has_keyframes else ())):
        if _require(state_dict, key, source).ndim != 3:
            raise CheckpointMismatchError(f"{source}: {key} has shape {tuple(state_dict[key].shape)}, expected 3-D")
    latent_dim, nfeats = state_dict["input_projection.weight"].shape
    layers = {int(m.group(1)) for key in state_dict if (m := re.match(r"seqTransDecoder\.stack\.(\d+)\.", key))}
    cond_layers = {int(m.group(1)) for key in state_dict if (m := re.match(r"cond_encoder\.(\d+)\.", key))}
    fields = dict(
        architecture=DATA_FORMATS[data_format],
        nfeats=int(nfeats),
        latent_dim=int(latent_dim),
        ff_size=int(state_dict["seqTransDecoder.stack.0.linear1.weight"].shape[0]),
        layers=len(layers),
        heads=heads,
        cond_feature_dim=int(state_dict["cond_projection.weight"].shape[1]),
        cond_encoder_layers=len(cond_layers),
        use_keyframes=has_keyframes,
        post_conv="final_conv.weight" in state_dict,
        max_cond_len=int(state_dict["null_cond_embed"].shape[1]),
        noise_schedule=noise_schedule,
        lambda_vel=float(lambda_vel),
    )
    if has_keyframes:
        fields["max_keyframes"] = int(state_dict["null_pose_embed"].shape[1])
    if cond_mask_prob is not None:
        fields["cond_drop_prob"] = float(cond_mask_prob)
        if fields["cond_drop_prob"] == 0:
            # Upstream samples such a model without guidance (generate forces guidance_param = 1).
            fields["guidance_scale"] = 1.0
    try:
        config = CFGMotionConfig(**fields)
    except InputError as error:
        raise CheckpointMismatchError(
            f"{source}: the weights and {args_path.name} do not form a valid CFG motion config: {error}"
        ) from error
    with allow_large_models(allow_large):
        check_model_size(CFGMotionModel, config, source=str(source))
    return config


def read_a2p_checkpoint(source_dir: str | Path, *, allow_large: bool = False) -> A2PCheckpoint:
    """Read an upstream audio2photoreal diffusion folder into a config and a state dict for `CFGMotionModel`.
    Every kept weight must be a finite floating-point tensor."""
    from hf_tts.convert.f5 import check_weight_tensor

    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise InputError(f"{source_dir} is not a folder (expected upstream's checkpoints/diffusion/<name>/)")
    args_path = source_dir / "args.json"
    if not args_path.is_file():
        raise InputError(f"{source_dir} has no args.json (upstream writes it next to model*.pt)")
    args = read_small_document(args_path, f"{args_path}", max_bytes=MAX_ARGS_BYTES)
    if not isinstance(args, dict):
        raise InputError(f"{args_path} must hold a JSON object (upstream's saved arguments), got {type(args).__name__}")
    source = find_checkpoint(source_dir)
    upstream = load_torch_checkpoint(source)
    if not isinstance(upstream, dict) or not all(isinstance(v, torch.Tensor) for v in upstream.values()):
        raise CheckpointMismatchError(f"{source} is not a bare state_dict (upstream saves model.state_dict())")
    config = config_from_upstream(args, upstream, source, allow_large=allow_large)

    expected_freqs = rotary_frequencies(config.latent_dim)
    state_dict, dropped, folded = {}, [], []
    for key, tensor in upstream.items():
        if key.startswith(DROPPED_PREFIXES):
            dropped.append(key)
        elif ROTARY_KEY.search(key):
            if tensor.shape != expected_freqs.shape or not torch.allclose(tensor.float(), expected_freqs):
                raise CheckpointMismatchError(
                    f"{source}: {key} does not hold the standard rotary frequencies 1/10000^(2i/{config.latent_dim})"
                )
            folded.append(key)
        else:
            check_weight_tensor(tensor, f"{source}: weight {key}")
            state_dict[rename_key(key)] = tensor.float().contiguous()
    return A2PCheckpoint(config, state_dict, source, dropped, folded)


def load_upstream_a2p(source_dir: str | Path, *, allow_large: bool = False) -> tuple[CFGMotionModel, A2PCheckpoint]:
    """Build a `CFGMotionModel` (eval mode) holding an upstream checkpoint's weights; every key must match."""
    checkpoint = read_a2p_checkpoint(source_dir, allow_large=allow_large)
    with allow_large_models(allow_large):
        model = CFGMotionModel(checkpoint.config)
    missing, unexpected = model.load_state_dict(checkpoint.state_dict, strict=False)
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{checkpoint.source_file}: weights do not fit the {checkpoint.config.architecture!r} model "
            f"(missing: {missing[:5]}, unexpected: {unexpected[:5]})"
        )
    return model.eval(), checkpoint


def convert_a2p_checkpoint(
    source_dir: str | Path,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    allow_large: bool = False,
    dtype: str = "float32",
) -> tuple[CFGMotionModel, A2PCheckpoint]:
    """Convert an upstream audio2photoreal diffusion folder into a `save_pretrained` folder (written atomically,
    with a model card naming the source checkpoint), with weights in `dtype` (`hf_tts.convert.f5.SAVE_DTYPES`).
    The output path is checked before anything is read, the whole checkpoint before anything is written."""
    from hf_tts.convert.f5 import cast_for_saving, check_save_dtype
    from hf_tts.hub.cards import write_model_card

    inputs = [source_dir]
    check_save_dtype(dtype)
    check_output_target(out_dir, inputs=inputs, overwrite=overwrite, kind="dir")
    model, checkpoint = load_upstream_a2p(source_dir, allow_large=allow_large)
    cast_for_saving(model, dtype, str(checkpoint.source_file))
    with atomic_output_dir(out_dir, overwrite=overwrite, inputs=inputs) as staging:
        model.save_pretrained(staging)
        write_model_card(
            staging,
            kind="cfg_motion",
            config=model.config,
            sources=[checkpoint.source_file],
            model_id=f"./{Path(out_dir).absolute().name}",
        )
        # Everything in staging is this run's: the card writer's temporary file is private (0600).
    return model, checkpoint


__all__ = ["A2PCheckpoint", "convert_a2p_checkpoint", "load_upstream_a2p", "read_a2p_checkpoint", "rename_key"]
