"""Recipe -> validated plan, reading headers only (plus the integer/bool buffers and vocoder, which must agree).

The plan is everything the stream and the writer need: the opened sources, per-tensor weights (layer rules
applied), output dtypes and the shard layout. Every check runs here, before any output byte exists; `--dry-run`
prints `MergePlan.describe()` and stops. NaN/Inf can only be seen in the tensor data, so the stream checks those
(into a temporary folder that an error removes).
"""

from __future__ import annotations

import json
import math
import numbers
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import regex
import torch
import yaml

from hf_tts.convert.xtts import is_trainer_only
from hf_tts.errors import CheckpointMismatchError, InputError
from hf_tts.file_utils import MAX_YAML_BYTES, check_finite, load_yaml
from hf_tts.merge.methods import MergeParameters
from hf_tts.merge.sources import (
    HUB_REPO_ID,
    PROCESSING_FILES,
    SAFETENSORS_DTYPES,
    VOCODER_PREFIX,
    MergeSource,
    RenamedReader,
    SourceOptions,
    TensorInfo,
    open_source,
)
from hf_tts.merge.specs import (
    DEFAULT_NORMALIZE,
    DEFAULT_RESCALE,
    LAYER_RULE_TIMEOUT_S,
    MAX_LAYER_PATTERN_CHARS,
    MAX_LAYER_PATTERN_REPEATS,
    METHODS,
    OUTPUT_DTYPE_NAMES,
    SPECS,
)
from hf_tts.presets import E2_PRESETS, F5_PRESETS

OUTPUT_DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in OUTPUT_DTYPE_NAMES}
DEFAULT_MAX_SHARD_SIZE = "5GB"
# How many differing keys/fields an error message names.
SHOWN_DIFFERENCES = 5
# What a recipe's `arch` may name instead of a file (hf_tts.convert.f5.resolve_arch).
ARCH_PRESET_NAMES = frozenset({*F5_PRESETS, *E2_PRESETS})
_FLOAT32_MAX = torch.finfo(torch.float32).max
_COUNTED_REPEAT = regex.compile(r"\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")
_RECIPE_KEYS = (
    "merge_method", "models", "base_model", "parameters", "layer_weights", "dtype", "source", "arch", "vocab",
    "config_from", "max_shard_size", "allow_config_mismatch",
)  # fmt: skip
# Method parameters of a recipe's `parameters:` (mergekit's names); each method reads those its spec lists.
_PARAMETER_KEYS = (
    "normalize", "lambda", "density", "rescale", "gamma", "epsilon", "t", "select_topk", "filter_wise", "max_iter",
    "tol", "eps", "nuslerp_flatten", "nuslerp_row_wise", "seed",
)  # fmt: skip
# Recipe field names of the parameters whose recipe name differs (lambda is a Python keyword).
_FIELD_NAMES = {"lambda": "scale"}
MAX_SEED = (1 << 63) - 1
MAX_KARCHER_ITERATIONS = 1000


@dataclass
class LayerRule:
    """Per-source weights for every tensor whose name matches `pattern` (a search with the `regex` module, whose
    syntax is Python's `re`); the first matching rule wins."""

    pattern: str
    weights: list[float]

    @classmethod
    def parse(cls, text: str) -> LayerRule:
        """`"REGEX=W1,W2,..."` as given to --layer-weights."""
        if not isinstance(text, str):
            raise InputError(f"--layer-weights {text!r:.120}: expected a string REGEX=W1,W2,...")
        pattern, separator, values = text.rpartition("=")
        if not separator or not pattern:
            raise InputError(f"--layer-weights {text!r:.120}: expected REGEX=W1,W2,... (one weight per source)")
        return cls(pattern, [_parse_weight(value, f"--layer-weights {text!r}") for value in values.split(",")])


def _parse_weight(value: str, where: str) -> float:
    """A weight written as text (command line): a finite number."""
    try:
        weight = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{where}: weight {value!r} is not a number") from None
    if not math.isfinite(weight):
        raise InputError(f"{where}: weight {value!r} is not finite; give finite numbers")
    return weight


def _number(value: Any, where: str) -> float:
    """A finite real number, given as a number: a string or a boolean is an error, never converted."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        hint = ""
        if isinstance(value, str):
            try:
                float(value)
                hint = " (YAML reads forms such as 1e8 as text: write 1.0e+8, unquoted)"
            except ValueError:
                pass
        raise InputError(f"{where} must be a number, got {value!r:.80} ({type(value).__name__}){hint}")
    try:
        number = float(value)
    except OverflowError:
        raise InputError(f"{where}: {value} is too large for a floating-point number") from None
    if not math.isfinite(number):
        raise InputError(f"{where} must be a finite number, got {value!r:.80}")
    return number


def _flag(value: Any, where: str, optional: bool = False) -> bool | None:
    """true/false as a boolean: the string "false" is not false, so it is refused rather than read as true."""
    if value is None and optional:
        return None
    if not isinstance(value, bool):
        allowed = "true, false or null" if optional else "true or false"
        raise InputError(f"{where} must be {allowed} (a boolean, unquoted), got {value!r:.80} ({type(value).__name__})")
    return value


def _text(value: Any, where: str, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        allowed = "a non-empty string or null" if optional else "a non-empty string"
        raise InputError(f"{where} must be {allowed}, got {value!r:.80} ({type(value).__name__})")
    return value


def _path_text(value: Any, where: str, optional: bool = False) -> str | None:
    """A path or Hub id given in Python: a string or an os.PathLike."""
    return _text(os.fspath(value) if isinstance(value, os.PathLike) else value, where, optional)


def _recipe_path(value: str, name: str, folder: Path) -> str:
    """A recipe's path field read relative to the recipe's folder, not the current directory: an existing entry
    there, or anything that cannot be a Hub repo id (`namespace/name`) or an arch preset, becomes that path (so a
    missing one is reported where it was looked for). Absolute and `~` paths are kept."""
    if name == "arch" and value in ARCH_PRESET_NAMES:
        return value  # a preset wins over a file of that name, as in resolve_arch
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    candidate = folder / path
    hub_id = name in ("models", "base", "config_from") and HUB_REPO_ID.match(value) and not value.startswith(".")
    return value if hub_id and not candidate.exists() else os.path.normpath(candidate)


def _optional_path(value: str | os.PathLike | None) -> str | None:
    return None if value is None else os.fspath(value)


def _list(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise InputError(f"{where} must be a list, got {value!r:.80} ({type(value).__name__})")
    return value


def _mapping(value: Any, where: str, keys: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
    """A mapping with only `keys` (unknown keys refused with the valid list) and every `required` key."""
    if not isinstance(value, dict):
        raise InputError(f"{where} must be a mapping with keys {', '.join(keys)}, got {value!r:.80}")
    unknown = sorted(str(key) for key in value if key not in keys)
    if unknown:
        raise InputError(f"{where}: unknown keys {', '.join(unknown)}; valid keys: {', '.join(keys)}")
    missing = [key for key in required if key not in value]
    if missing:
        raise InputError(f"{where}: missing {', '.join(missing)}")
    return value


def _integer(value: Any, where: str, low: int, high: int) -> int:
    """A whole number in [low, high], given as an integer (not a boolean, a float or text)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputError(
            f"{where} must be a whole number in [{low}, {high}], got {value!r:.80} ({type(value).__name__})"
        )
    if not low <= int(value) <= high:
        raise InputError(f"{where} must be in [{low}, {high}], got {value}")
    return int(value)


def _shard_size_value(value: Any, where: str) -> str | int:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InputError(f"{where} must be a size such as 5GB or a number of bytes, got {value!r:.80}")
    return value


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
    rescale: bool | None = None  # None: the method's default (on for DARE and DELLA)
    gamma: float = 0.01  # breadcrumbs: fraction of largest |delta| dropped
    epsilon: float = 0.15  # DELLA: spread of keep probabilities around density
    t: float | None = None  # nearswap: similarity threshold (required)
    select_topk: float = 1.0  # SCE: fraction of highest-variance entries kept
    filter_wise: bool = False  # model_stock: one interpolation factor per row instead of per tensor
    max_iter: int = 10  # karcher
    tol: float = 1e-5  # karcher
    eps: float = 1e-8  # multislerp
    nuslerp_flatten: bool = True
    nuslerp_row_wise: bool = False
    seed: int | None = None  # DARE / DELLA random draws; None: drawn once and recorded in the saved recipe

    def check_types(self) -> None:
        """Every field has its type (a recipe built in Python is checked as strictly as one read from YAML)."""
        for index, model in enumerate(_list(self.models, "models")):
            _path_text(model, f"source {index + 1}")
        if self.weights is not None:
            for index, weight in enumerate(_list(self.weights, "weights")):
                _number(weight, f"weight {index + 1}")
        _text(self.method, "method")
        _path_text(self.base, "base", optional=True)
        _flag(self.normalize, "normalize", optional=True)
        _number(self.scale, "lambda (scale)")
        _number(self.density, "density")
        for index, rule in enumerate(_list(self.layer_weights, "layer_weights")):
            if not isinstance(rule, LayerRule):
                raise InputError(f"layer_weights[{index}] must be a LayerRule or 'REGEX=W1,W2,...', got {rule!r}")
            _text(rule.pattern, f"layer_weights[{index}].pattern")
            for weight in _list(rule.weights, f"layer_weights[{index}].weights"):
                _number(weight, f"--layer-weights {rule.pattern!r} weight")
        _text(self.dtype, "dtype", optional=True)
        for name in ("arch", "vocab", "config_from"):
            _path_text(getattr(self, name), name, optional=True)
        _text(self.source, "source")
        _shard_size_value(self.max_shard_size, "max_shard_size")
        _flag(self.allow_config_mismatch, "allow_config_mismatch")
        _flag(self.rescale, "rescale", optional=True)
        for name in ("gamma", "epsilon", "select_topk", "tol", "eps"):
            _number(getattr(self, name), name)
        if self.t is not None:
            _number(self.t, "t")
        for name in ("filter_wise", "nuslerp_flatten", "nuslerp_row_wise"):
            _flag(getattr(self, name), name)
        _integer(self.max_iter, "max_iter", 1, MAX_KARCHER_ITERATIONS)
        if self.seed is not None:
            _integer(self.seed, "seed", 0, MAX_SEED)

    def resolved(self) -> MergeRecipe:
        """A copy with every default made explicit (what is saved, so re-running it needs nothing else)."""
        return MergeRecipe(
            **{
                **{f.name: getattr(self, f.name) for f in fields(self)},
                "models": [os.fspath(model) for model in self.models],
                "weights": [float(w) for w in self.weights] if self.weights is not None else [1.0] * len(self.models),
                "normalize": DEFAULT_NORMALIZE.get(self.method, True) if self.normalize is None else self.normalize,
                "base": None if self.base is None else os.fspath(self.base),
                "scale": float(self.scale),
                "density": float(self.density),
                "rescale": DEFAULT_RESCALE.get(self.method, False) if self.rescale is None else self.rescale,
                **{name: float(getattr(self, name)) for name in ("gamma", "epsilon", "select_topk", "tol", "eps")},
                "t": None if self.t is None else float(self.t),
                "layer_weights": [
                    LayerRule(rule.pattern, [float(w) for w in rule.weights]) for rule in self.layer_weights
                ],
                **{name: _optional_path(getattr(self, name)) for name in ("arch", "vocab", "config_from")},
            }
        )

    def to_yaml(self) -> str:
        recipe = self.resolved()
        document = {
            "merge_method": recipe.method,
            "models": [{"model": model, "weight": weight} for model, weight in zip(recipe.models, recipe.weights)],
            "base_model": recipe.base,
            "parameters": recipe.parameter_document(),
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

    def parameter_document(self) -> dict[str, Any]:
        """`parameters:` of the saved recipe: normalize, lambda and density, plus those the method reads."""
        names = ["normalize", "lambda", "density"]
        spec = SPECS.get(self.method)
        names += [name for name in (spec.parameters if spec else ()) if name not in names]
        return {name: getattr(self, _FIELD_NAMES.get(name, name)) for name in names}

    def merge_parameters(self) -> MergeParameters:
        """The method parameters of a resolved recipe."""
        return MergeParameters(
            normalize=bool(self.normalize),
            scale=self.scale,
            density=self.density,
            rescale=bool(self.rescale),
            gamma=self.gamma,
            epsilon=self.epsilon,
            t=self.t,
            select_topk=self.select_topk,
            filter_wise=self.filter_wise,
            max_iter=self.max_iter,
            tol=self.tol,
            eps=self.eps,
            nuslerp_flatten=self.nuslerp_flatten,
            nuslerp_row_wise=self.nuslerp_row_wise,
            seed=self.seed,
        )

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> MergeRecipe:
        """Read a recipe strictly: safe YAML (no aliases, tags, or size/depth bombs), only known keys, every value of
        its type (a quoted "false" is an error, not true). Error messages name the recipe and the key."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"recipe {path} does not exist or is not a file")
        try:
            with open(path, "rb") as handle:
                raw = handle.read(MAX_YAML_BYTES + 1)  # load_yaml refuses anything longer
        except OSError as error:
            raise InputError(f"recipe {path} cannot be read: {error.strerror or error}") from None
        recipe = cls.from_document(load_yaml(raw, f"recipe {path}"), f"recipe {path}")
        return recipe.with_paths(lambda value, name: _recipe_path(value, name, path.absolute().parent))

    def with_paths(self, convert: Callable[[str, str], str]) -> MergeRecipe:
        """A copy whose sources, base, config_from, arch and vocab are `convert(value, field name)`."""
        single = {}
        for name in ("base", "config_from", "arch", "vocab"):
            value = getattr(self, name)
            single[name] = None if value is None else convert(os.fspath(value), name)
        return replace(self, models=[convert(os.fspath(model), "models") for model in self.models], **single)

    def with_absolute_paths(self) -> MergeRecipe:
        """A copy whose local paths are absolute (what is saved): `--recipe` reads relative paths against the
        recipe's own folder, so the saved recipe replays from any working directory and any output folder, to the
        same bytes. Hub ids and preset names stay as they are."""

        def absolute(value: str, name: str) -> str:
            path = Path(value).expanduser()
            if (name == "arch" and value in ARCH_PRESET_NAMES) or not path.exists():
                return value
            return os.path.abspath(path)

        return self.with_paths(absolute)

    @classmethod
    def from_document(cls, document: Any, where: str = "recipe") -> MergeRecipe:
        """A recipe from parsed YAML/JSON data (what `from_yaml` reads); InputError naming `where` and the key."""
        document = _mapping(document, where, _RECIPE_KEYS, required=("models",))
        models, weights = [], []
        for index, entry in enumerate(_list(document["models"], f"{where}: models")):
            entry = _mapping(entry, f"{where}: models[{index}]", ("model", "weight"), required=("model",))
            models.append(_text(entry["model"], f"{where}: models[{index}].model"))
            weights.append(_number(entry.get("weight", 1.0), f"{where}: models[{index}].weight"))
        parameters = document.get("parameters")
        parameters = {} if parameters is None else _mapping(parameters, f"{where}: parameters", _PARAMETER_KEYS)
        rules = []
        layer_weights = document.get("layer_weights")
        for index, entry in enumerate([] if layer_weights is None else _list(layer_weights, f"{where}: layer_weights")):
            label = f"{where}: layer_weights[{index}]"
            entry = _mapping(entry, label, ("pattern", "weights"), required=("pattern", "weights"))
            rule_weights = [
                _number(weight, f"{label}.weights") for weight in _list(entry["weights"], f"{label}.weights")
            ]
            rules.append(LayerRule(_text(entry["pattern"], f"{label}.pattern"), rule_weights))
        return cls(
            models=models,
            weights=weights,
            method=_text(document.get("merge_method", "linear"), f"{where}: merge_method"),
            base=_text(document.get("base_model"), f"{where}: base_model", optional=True),
            normalize=_flag(parameters.get("normalize"), f"{where}: parameters.normalize", optional=True),
            scale=_number(parameters.get("lambda", 1.0), f"{where}: parameters.lambda"),
            density=_number(parameters.get("density", 1.0), f"{where}: parameters.density"),
            layer_weights=rules,
            dtype=_text(document.get("dtype"), f"{where}: dtype", optional=True),
            source=_text(document.get("source", "ema"), f"{where}: source"),
            arch=_text(document.get("arch"), f"{where}: arch", optional=True),
            vocab=_text(document.get("vocab"), f"{where}: vocab", optional=True),
            config_from=_text(document.get("config_from"), f"{where}: config_from", optional=True),
            max_shard_size=_shard_size_value(
                document.get("max_shard_size", DEFAULT_MAX_SHARD_SIZE), f"{where}: max_shard_size"
            ),
            allow_config_mismatch=_flag(
                document.get("allow_config_mismatch", False), f"{where}: allow_config_mismatch"
            ),
            rescale=_flag(parameters.get("rescale"), f"{where}: parameters.rescale", optional=True),
            **{
                name: _number(parameters.get(name, default), f"{where}: parameters.{name}")
                for name, default in (("gamma", 0.01), ("epsilon", 0.15), ("select_topk", 1.0), ("tol", 1e-5))
                + (("eps", 1e-8),)
            },
            t=None if parameters.get("t") is None else _number(parameters["t"], f"{where}: parameters.t"),
            **{
                name: _flag(parameters.get(name, default), f"{where}: parameters.{name}")
                for name, default in (("filter_wise", False), ("nuslerp_flatten", True), ("nuslerp_row_wise", False))
            },
            max_iter=_integer(
                parameters.get("max_iter", 10), f"{where}: parameters.max_iter", 1, MAX_KARCHER_ITERATIONS
            ),
            seed=None
            if parameters.get("seed") is None
            else _integer(parameters["seed"], f"{where}: parameters.seed", 0, MAX_SEED),
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
    def parameters(self) -> MergeParameters:
        return self.recipe.merge_parameters()

    @property
    def total_bytes(self) -> int:
        return sum(TensorInfo(task.info.shape, task.out_dtype).nbytes for task in self.tasks)

    def inputs(self) -> list[MergeSource]:
        return self.sources + ([self.base] if self.base is not None else [])

    def describe(self) -> str:
        recipe = self.recipe
        lines = [
            f"merge plan: {recipe.method} of {len(self.sources)} {self.family} sources -> {self.layout}",
            "  "
            + " ".join(f"{name}={value}" for name, value in recipe.parameter_document().items())
            + f" dtype={recipe.dtype or 'as inputs'}",
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


def _weight_sum(weights: list[float], where: str) -> float:
    try:
        return math.fsum(weights)
    except OverflowError:
        raise InputError(f"{where}: the weights {weights} overflow when summed; use smaller weights") from None


def _check_weights(recipe: MergeRecipe) -> None:
    """Method, counts and numbers: every weight finite, their sum finite and non-zero, each normalised coefficient
    finite, lambda finite, density in (0, 1]."""
    count = len(recipe.models)
    if recipe.method not in METHODS:
        raise InputError(f"unknown merge method {recipe.method!r}; choose one of {', '.join(METHODS)}")
    spec = SPECS[recipe.method]
    if recipe.method == "slerp" and count != 2:
        raise InputError(f"slerp interpolates exactly 2 sources, got {count}")
    if recipe.method == "slerp" and recipe.base is not None:
        raise InputError("slerp takes no --base: it interpolates from the first source (weight share 0) to the second")
    if spec.base == "required" and recipe.base is None:
        raise InputError(f"{recipe.method} merges task vectors (source - base): pass --base SRC")
    if spec.base == "none" and recipe.base is not None:
        raise InputError(f"{recipe.method} takes no --base (it combines the sources themselves); drop --base")
    if count < spec.min_sources:
        raise InputError(f"{recipe.method} needs at least {spec.min_sources} sources, got {count}")
    if spec.max_sources is not None and count > spec.max_sources:
        raise InputError(f"{recipe.method} takes at most {spec.max_sources} source(s) besides the base, got {count}")
    if not 0.0 < recipe.density <= 1.0:
        raise InputError(f"--density must be in (0, 1] (the fraction of each task vector kept), got {recipe.density}")
    _check_method_parameters(recipe)
    if recipe.dtype is not None and recipe.dtype not in OUTPUT_DTYPES:
        raise InputError(f"--dtype {recipe.dtype!r} is not one of {', '.join(OUTPUT_DTYPES)}")
    if recipe.source not in ("ema", "online"):
        raise InputError(f"--source must be 'ema' or 'online', got {recipe.source!r}")
    for where, weights in [("--weights", recipe.weights)] + [
        (f"--layer-weights {rule.pattern!r}", rule.weights) for rule in recipe.layer_weights
    ]:
        if len(weights) != count:
            raise InputError(f"{where}: {len(weights)} weights for {count} sources; give one weight per source")
        total = _weight_sum(weights, where)
        # The formulas scale float32 tensors by the weights (torch refuses a factor beyond float32's range).
        if any(abs(weight) > _FLOAT32_MAX for weight in weights):
            raise InputError(
                f"{where}: the weights {weights} exceed float32's range (±{_FLOAT32_MAX:.3g}); scale them down"
            )
        if total == 0:
            raise InputError(f"{where}: the weights {weights} sum to zero, so the merge is undefined")
        if recipe.normalize and not all(math.isfinite(weight / total) for weight in weights):
            raise InputError(
                f"{where}: the weights {weights} sum to {total:g}, so dividing by their sum overflows; use weights "
                "whose sum is not close to zero"
            )
    if abs(recipe.scale) > _FLOAT32_MAX:
        raise InputError(f"--lambda {recipe.scale:g} exceeds float32's range (±{_FLOAT32_MAX:.3g})")
    for rule in recipe.layer_weights:
        compile_layer_pattern(rule.pattern)


def _check_method_parameters(recipe: MergeRecipe) -> None:
    """The ranges of the method-specific parameters (mergekit's constraints, refused here instead of mid-merge)."""
    if not 0.0 <= recipe.gamma <= 1.0:
        raise InputError(
            f"--gamma must be in [0, 1] (the fraction of largest task-vector entries dropped), got {recipe.gamma}"
        )
    if not 0.0 <= recipe.select_topk <= 1.0:
        raise InputError(f"--select-topk must be in [0, 1] (the fraction of entries kept), got {recipe.select_topk}")
    if recipe.epsilon < 0.0:
        raise InputError(f"--epsilon must be >= 0, got {recipe.epsilon}")
    della = recipe.method in ("della", "della_linear") and recipe.density < 1.0
    if della and not (recipe.density - recipe.epsilon > 0.0 and recipe.density + recipe.epsilon < 1.0):
        raise InputError(
            f"{recipe.method}: density ± epsilon must lie in (0, 1) (keep probabilities), got density "
            f"{recipe.density} and epsilon {recipe.epsilon}; lower --epsilon"
        )
    for name in ("tol", "eps"):
        if not getattr(recipe, name) > 0.0:
            raise InputError(f"--{name} must be positive, got {getattr(recipe, name)}")
    if recipe.method == "nearswap" and recipe.t is None:
        raise InputError("nearswap needs --t (entries of the source within t of the base are taken from the source)")
    if recipe.t is not None and abs(recipe.t) > _FLOAT32_MAX:
        raise InputError(f"--t {recipe.t:g} exceeds float32's range (±{_FLOAT32_MAX:.3g})")


def compile_layer_pattern(pattern: str) -> regex.Pattern:
    """Compile a --layer-weights pattern, refusing syntax errors and patterns too long or with counted repeats too
    large to compile quickly (see MAX_LAYER_PATTERN_*)."""
    where = f"--layer-weights {pattern!r:.120}"
    if len(pattern) > MAX_LAYER_PATTERN_CHARS:
        raise InputError(f"{where}: the pattern is longer than {MAX_LAYER_PATTERN_CHARS} characters")
    repeats = 1
    for match in _COUNTED_REPEAT.finditer(pattern):
        repeats *= max(int(bound) if bound else 1 for bound in match.groups(default=""))
        if repeats > MAX_LAYER_PATTERN_REPEATS:
            raise InputError(
                f"{where}: counted repeats ({{m,n}}) multiply to more than {MAX_LAYER_PATTERN_REPEATS}; use + or * "
                "instead"
            )
    try:
        return regex.compile(pattern)
    except (regex.error, ValueError, OverflowError, RecursionError) as error:
        raise InputError(f"{where} is not a valid regular expression: {error}") from None


def layer_pattern_matches(compiled: regex.Pattern, key: str) -> bool:
    """Whether a --layer-weights pattern matches tensor name `key`; a search that runs past LAYER_RULE_TIMEOUT_S
    (catastrophic backtracking) is an InputError naming the pattern."""
    try:
        return compiled.search(key, timeout=LAYER_RULE_TIMEOUT_S) is not None
    except TimeoutError:
        raise InputError(
            f"--layer-weights {compiled.pattern!r:.120} took over {LAYER_RULE_TIMEOUT_S} s on the tensor name "
            f"{key!r} (nested quantifiers such as (a+)+ backtrack exponentially); simplify the pattern"
        ) from None


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


def _align_xtts_layouts(sources: list[MergeSource]) -> None:
    """The first source's layout decides the output's. A released XTTS checkpoint first: the trainer-only modules of
    trainer checkpoints are left out (Coqui's loader deletes them anyway). A trainer checkpoint first: every source
    must have them, since the trainer restores them."""
    if sources[0].kind != "xtts":
        return
    has_trainer_modules = [any(is_trainer_only(key) for key in source.reader.infos()) for source in sources]
    if has_trainer_modules[0]:
        lacking = next((index for index, present in enumerate(has_trainer_modules) if not present), None)
        if lacking is not None and sources[lacking].kind == "xtts":
            raise CheckpointMismatchError(
                f"source 1 ({sources[0].spec}) is a Coqui trainer checkpoint (with the DVAE and mel front ends) but "
                f"{sources[lacking].spec} is a released checkpoint without them; list a released checkpoint first to "
                "write the released layout"
            )
        return
    for source in sources:
        if source.kind == "xtts":
            names = {key: key for key in source.reader.infos() if not is_trainer_only(key)}
            source.reader = RenamedReader(source.reader, names)


def _check_copies_agree(labelled: list[tuple[str, MergeSource]], keys: list[str]) -> None:
    """Integer/bool buffers (step counters, `initted`, codebook sizes) and the vocoder are copied, never averaged:
    every source must hold the same values. Pages are handed back after each key (the vocoder is tens of MB)."""
    reference_label, reference = labelled[0]
    for key in keys:
        first = reference.reader.tensor(key)
        # NaN != NaN: a damaged copy would otherwise be reported as a difference between the sources.
        check_finite(first, f"{reference_label}: tensor {key!r}")
        for label, source in labelled[1:]:
            other = source.reader.tensor(key)
            check_finite(other, f"{label}: tensor {key!r}")
            if not torch.equal(first, other):
                values = f"{first.tolist()} vs {other.tolist()}" if first.numel() < 5 else "values differ"
                if is_trainer_only(key) and reference.kind == "xtts":
                    raise CheckpointMismatchError(
                        f"tensor {key!r} of a trainer-only module (DVAE, mel front ends) differs between "
                        f"{reference_label} and {label}: fine-tunes of one base never change them, so these do not "
                        "share a base; they are copied, never averaged"
                    )
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
    if not isinstance(recipe, MergeRecipe):
        raise InputError(f"recipe must be a MergeRecipe or a YAML path, got {type(recipe).__name__}")
    recipe.check_types()
    recipe = recipe.resolved()
    _check_weights(recipe)
    if SPECS[recipe.method].random and recipe.seed is None:
        # Drawn once and saved with the recipe, so the merge can be repeated exactly.
        recipe.seed = secrets.randbelow(MAX_SEED + 1)
    max_shard_size = _parse_shard_size(recipe.max_shard_size)
    options = SourceOptions(
        arch=recipe.arch, vocab=recipe.vocab, source=recipe.source, trust_pickle=trust_pickle, token=token
    )
    sources = [open_source(spec, options) for spec in recipe.models]
    base = open_source(recipe.base, options) if recipe.base is not None else None
    _align_xtts_layouts([*sources, *([base] if base is not None else [])])
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
    rules = [(rule, compile_layer_pattern(rule.pattern)) for rule in recipe.layer_weights]
    out_dtype = OUTPUT_DTYPES[recipe.dtype] if recipe.dtype else None
    tasks, copied = [], []
    supported = set(SAFETENSORS_DTYPES.values())
    xtts = sources[0].kind == "xtts"
    for key in sorted(infos):
        info = infos[key]
        if info.dtype not in supported:
            raise InputError(
                f"source 1 ({sources[0].spec}): tensor {key!r} has dtype {info.dtype}, which merging does not support "
                f"(supported: {', '.join(sorted(SAFETENSORS_DTYPES))})"
            )
        if not info.dtype.is_floating_point or key.startswith(VOCODER_PREFIX) or (xtts and is_trainer_only(key)):
            copied.append(key)
            tasks.append(TensorTask(key, info, info.dtype, False, (), None))
            continue
        rule = next((rule for rule, compiled in rules if layer_pattern_matches(compiled, key)), None)
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
