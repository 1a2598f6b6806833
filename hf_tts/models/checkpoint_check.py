"""Do a checkpoint's weight shapes fit an F5-TTS / E2-TTS config? One clear sentence when they do not.

The most common upstream complaint is a checkpoint loaded with the wrong architecture (an E2 fine-tune as F5, a Small
model as Base, a vocab that is not the checkpoint's), which torch reports as hundreds of missing keys and shape errors.
Here the weights are summarised (family, size, text vocabulary) and compared with what the config builds, so the error
says what the checkpoint is and which preset to use. Only shapes are read, so a folder is checked from the safetensors
header alone. Shared by the upstream converter and `from_pretrained` (which never parses upstream formats).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from hf_tts.configuration_utils import FlowMatchingTTSConfig
from hf_tts.errors import CheckpointMismatchError
from hf_tts.file_utils import read_safetensors_header

FAMILY_NAMES = {"hf_tts_f5": "F5-TTS (DiT)", "hf_tts_e2": "E2-TTS (UNetT)"}
_BACKBONE_PREFIX = re.compile(r"^(?:backbone|transformer)\.")
_BLOCK_INDEX = re.compile(r"^(transformer_blocks|layers|text_embed\.text_blocks)\.(\d+)\.")


@dataclass(frozen=True)
class WeightsSummary:
    """What a backbone state dict's shapes say about the model that produced it."""

    model_type: str | None  # "hf_tts_f5" (DiT), "hf_tts_e2" (UNetT) or None (unrecognised)
    dim: int | None
    depth: int
    ff_inner: int | None
    text_rows: int | None  # text embedding rows = vocab size + 1 (row 0 is the filler)
    text_dim: int | None
    conv_layers: int

    @property
    def family(self) -> str:
        return FAMILY_NAMES.get(self.model_type, "an unrecognised backbone")

    def describe(self) -> str:
        return f"dim {self.dim}, depth {self.depth}"


def summarize_weights(shapes: Mapping[str, Sequence[int]]) -> WeightsSummary:
    """Summarise backbone weights given as {key: shape}; keys may carry `backbone.` or upstream's `transformer.`."""
    shapes = {_BACKBONE_PREFIX.sub("", key): tuple(shape) for key, shape in shapes.items()}
    blocks: dict[str, set[int]] = {}
    for key in shapes:
        if match := _BLOCK_INDEX.match(key):
            blocks.setdefault(match.group(1), set()).add(int(match.group(2)))
    if "layers" in blocks and "transformer_blocks" not in blocks:
        model_type, ff_key = "hf_tts_e2", "layers.0.4.ff.0.0.weight"
    elif any(key.startswith("transformer_blocks.0.attn_norm.") for key in shapes):
        model_type, ff_key = "hf_tts_f5", "transformer_blocks.0.ff.ff.0.0.weight"
    else:
        model_type, ff_key = None, ""
    text_shape = shapes.get("text_embed.text_embed.weight")
    dim_shape = shapes.get("time_embed.time_mlp.0.weight")
    return WeightsSummary(
        model_type=model_type,
        dim=dim_shape[0] if dim_shape else None,
        depth=len(blocks.get("layers" if model_type == "hf_tts_e2" else "transformer_blocks", ())),
        ff_inner=shapes[ff_key][0] if ff_key in shapes else None,
        text_rows=text_shape[0] if text_shape else None,
        text_dim=text_shape[1] if text_shape else None,
        conv_layers=len(blocks.get("text_embed.text_blocks", ())),
    )


def matching_presets(summary: WeightsSummary) -> list[str]:
    """Presets of the summary's family whose weight shapes it has (v0 and v1 always come together)."""
    from hf_tts.models.e2.configuration_e2 import E2TTSConfig
    from hf_tts.models.f5.configuration_f5 import F5TTSConfig

    config_class = {"hf_tts_f5": F5TTSConfig, "hf_tts_e2": E2TTSConfig}.get(summary.model_type)
    if config_class is None:
        return []
    return [name for name in config_class.presets if _same_size(config_class.from_preset(name), summary)]


def _same_size(config: FlowMatchingTTSConfig, summary: WeightsSummary) -> bool:
    expected = summarize_config(config)
    return (expected.dim, expected.depth, expected.ff_inner, expected.text_dim, expected.conv_layers) == (
        summary.dim,
        summary.depth,
        summary.ff_inner,
        summary.text_dim,
        summary.conv_layers,
    )


def summarize_config(config: FlowMatchingTTSConfig) -> WeightsSummary:
    """The summary of the weights `config` builds (without building them)."""
    return WeightsSummary(
        model_type=config.model_type,
        dim=config.dim,
        depth=config.depth,
        ff_inner=config.dim * config.ff_mult,
        text_rows=config.text_num_embeds + 1,
        text_dim=config.text_embed_dim,
        conv_layers=config.conv_layers,
    )


def _use_hint(summary: WeightsSummary) -> str:
    presets = matching_presets(summary)
    if not presets:
        return f"no preset has this size ({summary.describe()}); pass the upstream YAML/JSON config it was trained with"
    if len(presets) == 1:
        return f"use --arch {presets[0]}"
    return f"use --arch {' or '.join(presets)} (the weights cannot tell these apart; pick the one it was trained as)"


def check_weight_shapes(
    shapes: Mapping[str, Sequence[int]],
    expected: Mapping[str, Sequence[int]],
    config: FlowMatchingTTSConfig,
    *,
    arch_label: str,
    vocab_label: str | None = None,
) -> None:
    """Raise a one-line CheckpointMismatchError unless `shapes` has exactly the keys and shapes of `expected`.

    `shapes` and `expected` are {key: shape} in the same key layout; `arch_label` names where the config came from
    (e.g. "--arch F5TTS_v1_Base"); `vocab_label` names the vocab file the text embedding must fit, if any.
    """
    shapes = {key: tuple(shape) for key, shape in shapes.items()}
    expected = {key: tuple(shape) for key, shape in expected.items()}
    if shapes == expected:
        return
    found, wanted = summarize_weights(shapes), summarize_config(config)
    family_wanted = FAMILY_NAMES.get(config.model_type, config.model_type)
    if found.model_type != wanted.model_type:
        raise CheckpointMismatchError(
            f"this checkpoint is {found.family} but {arch_label} is {family_wanted}; {_use_hint(found)}"
        )
    if not _same_size(config, found):
        raise CheckpointMismatchError(
            f"this checkpoint is {found.family} with {found.describe()} (ff {found.ff_inner}, text_dim "
            f"{found.text_dim}, {found.conv_layers} text conv layers) but {arch_label} builds {wanted.describe()} "
            f"(ff {wanted.ff_inner}, text_dim {wanted.text_dim}, {wanted.conv_layers} text conv layers); "
            f"{_use_hint(found)}"
        )
    if found.text_rows != wanted.text_rows and found.text_rows is not None:
        tokens, have = found.text_rows - 1, config.text_num_embeds
        source = f"the vocab {vocab_label}" if vocab_label else f"{arch_label} (text_num_embeds)"
        difference = f"{abs(tokens - have)} {'more' if tokens > have else 'fewer'}"
        raise CheckpointMismatchError(
            f"{source} does not match the checkpoint: it has {have} tokens but the checkpoint's text embedding has "
            f"{found.text_rows} rows = {tokens} tokens + filler ({difference} in the checkpoint); use the vocab.txt "
            "the checkpoint was trained with"
        )
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = sorted(key for key in set(shapes) & set(expected) if shapes[key] != expected[key])
    problems = [f"{len(missing)} missing (e.g. {missing[0]})"] if missing else []
    problems += [f"{len(unexpected)} unexpected (e.g. {unexpected[0]})"] if unexpected else []
    problems += (
        [f"{len(wrong)} of other shape (e.g. {wrong[0]} {shapes[wrong[0]]} vs {expected[wrong[0]]})"] if wrong else []
    )
    raise CheckpointMismatchError(
        f"the checkpoint's weights do not fit {arch_label}: {'; '.join(problems)} keys; check flags such as qk_norm "
        "and long_skip_connection in the arch"
    )


def expected_state_shapes(model_class: type[torch.nn.Module], config: FlowMatchingTTSConfig) -> dict[str, tuple]:
    """{key: shape} of the state dict `model_class(config)` has, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = model_class(config)
    return {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}


def zero_init_keys(model_class: type[torch.nn.Module], config: FlowMatchingTTSConfig) -> set[str]:
    """Keys of the adaLN modulations and output projection: a folder may lack them (they are initialised, to zero
    with `init_adaln_zero`), so their absence is not a mismatch."""
    from hf_tts.layers.normalization import ZeroInitLinear

    with torch.device("meta"):
        model = model_class(config)
    return {
        f"{name}.{param}"
        for name, module in model.named_modules()
        if isinstance(module, ZeroInitLinear)
        for param, _ in module.named_parameters(recurse=False)
    }


def read_safetensors_shapes(path: str | os.PathLike) -> dict[str, tuple]:
    """{key: shape} from a safetensors file's JSON header only (the tensors are not read)."""
    header, _ = read_safetensors_header(path)
    return {key: tuple(entry["shape"]) for key, entry in header.items() if key != "__metadata__"}


def check_pretrained_folder(
    folder: str | os.PathLike, model_class: type[torch.nn.Module], config: FlowMatchingTTSConfig
) -> None:
    """Raise a CheckpointMismatchError when the weights in a `save_pretrained` folder do not fit `config`.

    Reads `model.safetensors` (or the shards its index names) headers only; a folder without local safetensors
    weights is left to transformers.
    """
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        return
    shapes: dict[str, tuple] = {}
    for name in files:
        shapes.update(read_safetensors_shapes(folder / name))
    label = f"the config of {folder} ({config.architecture or config.model_type})"
    expected = expected_state_shapes(model_class, config)
    for key in zero_init_keys(model_class, config) - set(shapes):
        del expected[key]
    check_weight_shapes(shapes, expected, config, arch_label=label)
