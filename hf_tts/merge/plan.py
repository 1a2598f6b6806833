"""Recipe -> validated plan, reading headers only (plus the integer/bool buffers and vocoder, which must agree).

The plan is everything the stream and the writer need: the opened sources, per-tensor weights (layer rules
applied), output dtypes and the shard layout. Every check runs here, before any output byte exists; `--dry-run`
prints `MergePlan.describe()` and stops. NaN/Inf can only be seen in the tensor data, so the stream checks those
(into a temporary folder that an error removes).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import yaml

from hf_tts.errors import CheckpointMismatchError, InputError
from hf_tts.merge.methods import BASE_METHODS, DEFAULT_NORMALIZE, METHODS
from hf_tts.merge.sources import (
    PROCESSING_FILES,
    VOCODER_PREFIX,
    MergeSource,
    SourceOptions,
    TensorInfo,
    open_source,
)

OUTPUT_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
DEFAULT_MAX_SHARD_SIZE = "5GB"
# How many differing keys/fields an error message names.
SHOWN_DIFFERENCES = 5


@dataclass
class LayerRule:
    """Per-source weights for every tensor whose name matches `pattern` (re.search); the first matching rule wins."""

    pattern: str
    weights: list[float]

    @classmethod
    def parse(cls, text: str) -> LayerRule:
        """`"REGEX=W1,W2,..."` as given to --layer-weights."""
        pattern, separator, values = text.rpartition("=")
        if not separator or not pattern:
            raise InputError(f"--layer-weights {text!r}: expected REGEX=W1,W2,... (one weight per source)")
        return cls(pattern, [_parse_weight(value, f"--layer-weights {text!r}") for value in values.split(",")])


def _parse_weight(value: Any, where: str) -> float:
    try:
        weight = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: weight {value!r} is not a number") from None
    if not math.isfinite(weight):
        raise InputError(f"{where}: weight {value!r} is not finite")
    return weight


@dataclass
class MergeRecipe:
    """Everything that defines a merge; saved with the output as `merge_recipe.yaml` and accepted by --recipe."""

    models: list[str]
    weights: list[float] | None = None  # None: equal weights
    method: str = "linear"
    base: str | None = None
    normalize: bool | None = None  # None: the method's default
    scale: float = 1.0  # lambda of task arithmetic / TIES
    density: float = 1.0  # TIES: fraction of each task vector kept
    layer_weights: list[LayerRule] = field(default_factory=list)
    dtype: str | None = None  # None: the inputs' dtype
    source: str = "ema"
    arch: str | None = None
    vocab: str | None = None
    config_from: str | None = None
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE
    allow_config_mismatch: bool = False

    def resolved(self) -> MergeRecipe:
        """A copy with every default made explicit (what is saved, so re-running it needs nothing else)."""
        return MergeRecipe(
            **{
                **{f.name: getattr(self, f.name) for f in fields(self)},
                "models": [str(model) for model in self.models],
                "weights": list(self.weights) if self.weights is not None else [1.0] * len(self.models),
                "normalize": DEFAULT_NORMALIZE.get(self.method, True) if self.normalize is None else self.normalize,
                "base": None if self.base is None else str(self.base),
            }
        )

    def to_yaml(self) -> str:
        recipe = self.resolved()
        document = {
            "merge_method": recipe.method,
            "models": [{"model": model, "weight": weight} for model, weight in zip(recipe.models, recipe.weights)],
            "base_model": recipe.base,
            "parameters": {"normalize": recipe.normalize, "lambda": recipe.scale, "density": recipe.density},
            "layer_weights": [
                {"pattern": rule.pattern, "weights": list(rule.weights)} for rule in recipe.layer_weights
            ],
            "dtype": recipe.dtype,
            "source": recipe.source,
            "arch": recipe.arch,
            "vocab": recipe.vocab,
            "config_from": recipe.config_from,
            "max_shard_size": recipe.max_shard_size,
            "allow_config_mismatch": recipe.allow_config_mismatch,
        }
        return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)

    @classmethod
    def from_yaml(cls, path: str | Path) -> MergeRecipe:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"recipe {path} does not exist or is not a file")
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise InputError(f"recipe {path} is not valid YAML: {error}") from error
        known = {
            "merge_method", "models", "base_model", "parameters", "layer_weights", "dtype", "source", "arch",
            "vocab", "config_from", "max_shard_size", "allow_config_mismatch",
        }  # fmt: skip
        if not isinstance(document, dict) or not isinstance(document.get("models"), list):
            raise InputError(f"recipe {path} must be a mapping with a 'models' list ({{model: SRC, weight: W}} items)")
        unknown = sorted(set(document) - known)
        if unknown:
            raise InputError(f"recipe {path}: unknown keys {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        models, weights = [], []
        for index, entry in enumerate(document["models"]):
            if not isinstance(entry, dict) or "model" not in entry:
                raise InputError(f"recipe {path}: models[{index}] must be a mapping with 'model' (and 'weight')")
            models.append(str(entry["model"]))
            weights.append(_parse_weight(entry.get("weight", 1.0), f"recipe {path} models[{index}]"))
        parameters = document.get("parameters") or {}
        unknown = sorted(set(parameters) - {"normalize", "lambda", "density"})
        if unknown:
            raise InputError(
                f"recipe {path}: unknown parameters {', '.join(unknown)}; known: density, lambda, normalize"
            )
        rules = []
        for index, entry in enumerate(document.get("layer_weights") or []):
            if not isinstance(entry, dict) or "pattern" not in entry or not isinstance(entry.get("weights"), list):
                raise InputError(f"recipe {path}: layer_weights[{index}] must be {{pattern: REGEX, weights: [...]}}")
            where = f"recipe {path} layer_weights[{index}]"
            rules.append(LayerRule(str(entry["pattern"]), [_parse_weight(w, where) for w in entry["weights"]]))
        return cls(
            models=models,
            weights=weights,
            method=str(document.get("merge_method", "linear")),
            base=document.get("base_model"),
            normalize=parameters.get("normalize"),
            scale=_parse_weight(parameters.get("lambda", 1.0), f"recipe {path} parameters.lambda"),
            density=_parse_weight(parameters.get("density", 1.0), f"recipe {path} parameters.density"),
            layer_weights=rules,
            dtype=document.get("dtype"),
            source=str(document.get("source", "ema")),
            arch=document.get("arch"),
            vocab=document.get("vocab"),
            config_from=document.get("config_from"),
            max_shard_size=document.get("max_shard_size", DEFAULT_MAX_SHARD_SIZE),
            allow_config_mismatch=bool(document.get("allow_config_mismatch", False)),
        )


@dataclass(frozen=True)
class TensorTask:
    key: str
    info: TensorInfo  # shape and dtype in every source
    out_dtype: torch.dtype
    merged: bool  # False: an integer/bool buffer or vocoder tensor every source agrees on, copied from the first
    weights: tuple[float, ...]
    rule: str | None  # the layer rule that set the weights, None for the global weights


@dataclass
class MergePlan:
    recipe: MergeRecipe  # resolved
    sources: list[MergeSource]
    base: MergeSource | None
    donor: MergeSource  # config, tokenizer and XTTS sidecar files come from here
    tasks: list[TensorTask]
    shards: list[list[str]]  # keys per output shard (safetensors layout)
    max_shard_size: int

    @property
    def layout(self) -> str:
        """`xtts`: written back as a Coqui `model.pth`; `safetensors`: a save_pretrained folder."""
        return "xtts" if self.sources[0].kind == "xtts" else "safetensors"

    @property
    def family(self) -> str:
        return self.sources[0].family

    @property
    def total_bytes(self) -> int:
        return sum(TensorInfo(task.info.shape, task.out_dtype).nbytes for task in self.tasks)

    def inputs(self) -> list[MergeSource]:
        return self.sources + ([self.base] if self.base is not None else [])

    def describe(self) -> str:
        recipe = self.recipe
        lines = [
            f"merge plan: {recipe.method} of {len(self.sources)} {self.family} sources -> {self.layout}",
            f"  normalize={recipe.normalize} lambda={recipe.scale} density={recipe.density} "
            f"dtype={recipe.dtype or 'as inputs'}",
        ]
        for index, (source, weight) in enumerate(zip(self.sources, recipe.weights)):
            variant = f", {source.variant} weights" if source.variant else ""
            lines.append(f"  source {index + 1}: {source.spec} ({source.kind}{variant}) weight {weight:g}")
        if self.base is not None:
            lines.append(f"  base: {self.base.spec} ({self.base.kind})")
        for rule in recipe.layer_weights:
            matched = sum(task.rule == rule.pattern for task in self.tasks)
            lines.append(f"  layer rule {rule.pattern!r}: weights {rule.weights} on {matched} tensors")
        copied = [task.key for task in self.tasks if not task.merged]
        lines.append(
            f"  {len(self.tasks)} tensors ({len(self.tasks) - len(copied)} merged, {len(copied)} copied unchanged: "
            f"integer/bool buffers and vocoder), {self.total_bytes / 1e6:.1f} MB in {len(self.shards)} shard(s)"
        )
        lines.append(f"  config from: {self.donor.spec}")
        return "\n".join(lines)


def _differences(first: dict[str, Any], other: dict[str, Any], prefix: str = "") -> list[str]:
    """`field: first vs other` for each differing field; nested configs (the vocoder's) are compared field by field,
    and a nested config only one side has is shown as `{...}`."""
    differences = []
    for key in sorted(set(first) | set(other)):
        mine, theirs = first.get(key, "<missing>"), other.get(key, "<missing>")
        if isinstance(mine, dict) and isinstance(theirs, dict):
            differences.extend(_differences(mine, theirs, f"{prefix}{key}."))
        elif mine != theirs:
            shown = ["{...}" if isinstance(value, dict) else repr(value) for value in (mine, theirs)]
            differences.append(f"{prefix}{key}: {shown[0]} vs {shown[1]}")
    return differences


def _json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"{path} is not a readable JSON file: {error}") from error


def _check_processing_files(first_label: str, reference: MergeSource, label: str, source: MergeSource) -> None:
    """Tokenizer / processor settings both folders have must agree: the merge can carry only one of them."""
    if reference.folder is None or source.folder is None:
        return
    for name in PROCESSING_FILES:
        mine, theirs = reference.folder / name, source.folder / name
        if not (mine.is_file() and theirs.is_file()):
            continue
        mine, theirs = _json_file(mine), _json_file(theirs)
        if mine != theirs:
            both_mappings = isinstance(mine, dict) and isinstance(theirs, dict)
            differences = _differences(mine, theirs) if both_mappings else [f"{mine!r} vs {theirs!r}"]
            raise CheckpointMismatchError(
                f"{name} of {first_label} and {label} differ ({'; '.join(differences[:SHOWN_DIFFERENCES])}); pass "
                "--config-from SRC to take the tokenizer and processor settings from one source"
            )


def _check_weights(recipe: MergeRecipe) -> None:
    count = len(recipe.models)
    if recipe.method not in METHODS:
        raise InputError(f"unknown merge method {recipe.method!r}; choose one of {', '.join(METHODS)}")
    if recipe.method == "slerp" and count != 2:
        raise InputError(f"slerp interpolates exactly 2 sources, got {count}")
    if recipe.method == "slerp" and recipe.base is not None:
        raise InputError("slerp takes no --base: it interpolates from the first source (weight share 0) to the second")
    if recipe.method in BASE_METHODS and recipe.base is None:
        raise InputError(f"{recipe.method} merges task vectors (source - base): pass --base SRC")
    minimum = 1 if recipe.method in BASE_METHODS else 2
    if count < minimum:
        raise InputError(f"{recipe.method} needs at least {minimum} sources, got {count}")
    if not 0.0 < recipe.density <= 1.0:
        raise InputError(f"density must be in (0, 1], got {recipe.density}")
    if recipe.dtype is not None and recipe.dtype not in OUTPUT_DTYPES:
        raise InputError(f"--dtype {recipe.dtype!r} is not one of {', '.join(OUTPUT_DTYPES)}")
    if recipe.source not in ("ema", "online"):
        raise InputError(f"--source must be 'ema' or 'online', got {recipe.source!r}")
    for where, weights in [("--weights", recipe.weights)] + [
        (f"--layer-weights {rule.pattern!r}", rule.weights) for rule in recipe.layer_weights
    ]:
        if len(weights) != count:
            raise InputError(f"{where}: {len(weights)} weights for {count} sources; give one weight per source")
        if math.fsum(weights) == 0:
            raise InputError(f"{where}: the weights {weights} sum to zero, so the merge is undefined")
    for rule in recipe.layer_weights:
        try:
            re.compile(rule.pattern)
        except re.error as error:
            raise InputError(f"--layer-weights {rule.pattern!r} is not a valid regular expression: {error}") from error


def _check_agreement(
    reference: MergeSource,
    others: list[tuple[str, MergeSource]],
    allow_config_mismatch: bool,
    processing_files: bool = True,
) -> None:
    first_label = f"source 1 ({reference.spec})"
    for label, source in others:
        if source.family != reference.family:
            raise CheckpointMismatchError(
                f"{label} is a {source.family} model but {first_label} is {reference.family}; only models of one "
                "family merge"
            )
        differences = _differences(reference.fingerprint, source.fingerprint)
        if differences and not allow_config_mismatch:
            raise CheckpointMismatchError(
                f"the configs of {first_label} and {label} differ ({'; '.join(differences[:SHOWN_DIFFERENCES])}): "
                "they are different models even where the weight shapes agree (e.g. F5 v0 and v1). Pass "
                "--allow-config-mismatch only if you know they share a training ancestor"
            )
        if reference.vocab_sha256 != source.vocab_sha256:
            raise CheckpointMismatchError(
                f"the vocabularies of {first_label} ({', '.join(sorted(reference.vocab_files)) or 'none'}) and "
                f"{label} ({', '.join(sorted(source.vocab_files)) or 'none'}) differ: token ids would not line up, "
                "so the text embeddings cannot be averaged"
            )
        if processing_files:
            _check_processing_files(first_label, reference, label, source)
        infos, reference_infos = source.reader.infos(), reference.reader.infos()
        missing = sorted(set(reference_infos) - set(infos))
        extra = sorted(set(infos) - set(reference_infos))
        if missing or extra:
            parts = []
            if missing:
                parts.append(
                    f"{label} lacks {len(missing)} keys of {first_label}: {', '.join(missing[:SHOWN_DIFFERENCES])}"
                )
            if extra:
                parts.append(
                    f"{label} has {len(extra)} keys {first_label} lacks: {', '.join(extra[:SHOWN_DIFFERENCES])}"
                )
            raise CheckpointMismatchError("; ".join(parts))
        for key in sorted(reference_infos):
            if infos[key] != reference_infos[key]:
                raise CheckpointMismatchError(
                    f"tensor {key!r}: {first_label} has shape {list(reference_infos[key].shape)} "
                    f"{reference_infos[key].dtype}, {label} has {list(infos[key].shape)} {infos[key].dtype}"
                )


def _check_copies_agree(labelled: list[tuple[str, MergeSource]], keys: list[str]) -> None:
    """Integer/bool buffers (step counters, `initted`, codebook sizes) and the vocoder are copied, never averaged:
    every source must hold the same values. Pages are handed back after each key (the vocoder is tens of MB)."""
    reference_label, reference = labelled[0]
    for key in keys:
        first = reference.reader.tensor(key)
        for label, source in labelled[1:]:
            other = source.reader.tensor(key)
            if not torch.equal(first, other):
                values = f"{first.tolist()} vs {other.tolist()}" if first.numel() < 5 else "values differ"
                if key.startswith(VOCODER_PREFIX):
                    raise CheckpointMismatchError(
                        f"the vocoders of {reference_label} and {label} differ (tensor {key!r}): a vocoder is copied, "
                        "never averaged; attach the same vocoder to every source (hf-tts attach-vocoder) first"
                    )
                raise CheckpointMismatchError(
                    f"integer/bool buffer {key!r} differs between {reference_label} and {label} ({values}); such "
                    "buffers are copied, never averaged. Make them equal in the inputs (or drop them) before merging"
                )
        for _, source in labelled:
            source.reader.release(key)


def _parse_shard_size(value: str | int) -> int:
    from huggingface_hub.serialization._base import parse_size_to_int

    try:
        size = value if isinstance(value, int) else parse_size_to_int(str(value))
    except ValueError as error:
        raise InputError(f"--max-shard-size {value!r}: {error}") from error
    if size <= 0:
        raise InputError(f"--max-shard-size must be positive, got {value!r}")
    return size


def _shard(tasks: list[TensorTask], max_shard_size: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    filled = 0
    for task in tasks:
        size = TensorInfo(task.info.shape, task.out_dtype).nbytes
        if shards[-1] and filled + size > max_shard_size:
            shards.append([])
            filled = 0
        shards[-1].append(task.key)
        filled += size
    return shards


def build_plan(recipe: MergeRecipe, *, trust_pickle: bool = False, token: str | None = None) -> MergePlan:
    """Open and validate every source; raise InputError / CheckpointMismatchError naming what differs."""
    recipe = recipe.resolved()
    _check_weights(recipe)
    max_shard_size = _parse_shard_size(recipe.max_shard_size)
    options = SourceOptions(
        arch=recipe.arch, vocab=recipe.vocab, source=recipe.source, trust_pickle=trust_pickle, token=token
    )
    sources = [open_source(spec, options) for spec in recipe.models]
    base = open_source(recipe.base, options) if recipe.base is not None else None
    labelled = [(f"source {index + 1} ({source.spec})", source) for index, source in enumerate(sources)]
    if base is not None:
        labelled.append((f"base ({base.spec})", base))
    _check_agreement(sources[0], labelled[1:], recipe.allow_config_mismatch, recipe.config_from is None)
    donor = sources[0]
    if recipe.config_from is not None:
        donor = open_source(recipe.config_from, options)
        # The donor gives config and tokenizer only; the vocoder comes from the (agreeing) sources.
        _check_agreement(
            sources[0], [(f"--config-from ({donor.spec})", donor)], recipe.allow_config_mismatch, processing_files=False
        )

    infos = sources[0].reader.infos()
    rules = [(rule, re.compile(rule.pattern)) for rule in recipe.layer_weights]
    out_dtype = OUTPUT_DTYPES[recipe.dtype] if recipe.dtype else None
    tasks, copied = [], []
    for key in sorted(infos):
        info = infos[key]
        if not info.dtype.is_floating_point or key.startswith(VOCODER_PREFIX):
            copied.append(key)
            tasks.append(TensorTask(key, info, info.dtype, False, (), None))
            continue
        rule = next((rule for rule, regex in rules if regex.search(key)), None)
        weights = tuple(rule.weights) if rule else tuple(recipe.weights)
        tasks.append(TensorTask(key, info, out_dtype or info.dtype, True, weights, rule.pattern if rule else None))
    unused = [rule.pattern for rule in recipe.layer_weights if not any(task.rule == rule.pattern for task in tasks)]
    if unused:
        raise InputError(
            f"--layer-weights {unused[0]!r} matches no floating-point tensor (nor is it reached before an earlier "
            f"rule); tensor names look like {next(iter(sorted(infos)))!r}"
        )
    _check_copies_agree(labelled, copied)
    return MergePlan(
        recipe=recipe,
        sources=sources,
        base=base,
        donor=donor,
        tasks=tasks,
        shards=_shard(tasks, max_shard_size),
        max_shard_size=max_shard_size,
    )
