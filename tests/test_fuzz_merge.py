"""Property tests of the merge's parsers (hypothesis, bounded by tests.fuzz.FUZZ): recipe documents, --layer-weights
strings, weight lists and safetensors headers. Each input gives a valid plan/result or an InputError, never another
exception, and the inputs on disk are unchanged."""

from __future__ import annotations

import contextlib
import json
import math
import struct
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import assume, given
from hypothesis import strategies as st
from merge_utils import make_f5_folder, tree_sha256

from hf_tts.errors import InputError
from hf_tts.merge.plan import LayerRule, MergePlan, MergeRecipe, build_plan
from hf_tts.merge.sources import MappedSafetensors
from hf_tts.merge.stream import DistanceStats
from hf_tts.merge.write import write_weight_shards
from tests.fuzz import FUZZ

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
DOCUMENTS = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("fuzz_sources")
    folders = [make_f5_folder(root / name, seed) for seed, name in enumerate(["a", "b", "base"])]
    before = [tree_sha256(folder) for folder in folders]
    yield folders
    assert [tree_sha256(folder) for folder in folders] == before  # no property ever wrote to an input


def _plan_or_input_error(recipe_source) -> MergePlan | None:
    """build_plan on what `recipe_source()` returns; None when either refused it with an InputError."""
    try:
        return build_plan(recipe_source())
    except InputError as error:
        assert str(error).strip() and "\n" not in str(error).strip()
        return None


def _recipe_document(sources: list[Path]) -> st.SearchStrategy:
    """Near-valid recipes: each field either a plausible value or a random scalar/structure."""
    folder = st.sampled_from([str(path) for path in sources])
    model = st.fixed_dictionaries({"model": folder | SCALARS}, optional={"weight": SCALARS, "extra": SCALARS})
    plausible = {
        "merge_method": st.sampled_from(["linear", "slerp", "task_arithmetic", "ties", "nope"]),
        "models": st.lists(model, min_size=0, max_size=3),
        "base_model": st.none() | folder,
        "parameters": st.fixed_dictionaries(
            {},
            optional={
                "normalize": st.none() | st.booleans() | st.sampled_from(["no", "false"]),
                "lambda": st.floats(allow_nan=True) | st.integers(),
                "density": st.floats(min_value=-1, max_value=2) | st.just(math.nan),
            },
        ),
        "layer_weights": st.lists(
            st.fixed_dictionaries(
                {
                    "pattern": st.sampled_from(["text_embed", "blocks", "(", "^x$"]) | SCALARS,
                    "weights": st.lists(SCALARS, max_size=3) | SCALARS,
                }
            ),
            max_size=2,
        ),  # fmt: skip
        "dtype": st.sampled_from([None, "float32", "float16", "bfloat16", "int8"]),
        "source": st.sampled_from(["ema", "online", "x"]),
        "max_shard_size": st.sampled_from(["5GB", "1KB", 1000, 0, -1, "x", True]),
        "allow_config_mismatch": st.booleans() | st.sampled_from(["false", "true", 0, 1]),
    }
    fields = {name: value | SCALARS | DOCUMENTS for name, value in plausible.items()}
    return st.fixed_dictionaries({"models": fields.pop("models")}, optional=fields) | DOCUMENTS


@FUZZ
@given(data=st.data())
def test_recipe_documents(sources, tmp_path_factory, data):
    document = data.draw(_recipe_document(sources))
    # Through a real file and the safe YAML loader, as --recipe reads it (JSON is YAML; keys must be strings).
    path = tmp_path_factory.mktemp("recipe") / "recipe.yaml"
    try:
        path.write_text(json.dumps(document, allow_nan=True), encoding="utf-8")
    except (TypeError, ValueError):
        assume(False)
    plan = _plan_or_input_error(lambda: MergeRecipe.from_yaml(path))
    if plan is not None:
        # A valid plan's recipe, as written with the merge, replays to the same plan.
        replay = tmp_path_factory.mktemp("replay") / "recipe.yaml"
        replay.write_text(plan.recipe.to_yaml(), encoding="utf-8")
        assert build_plan(MergeRecipe.from_yaml(replay)).recipe == plan.recipe


@FUZZ
@given(text=st.text(max_size=300))
def test_recipe_yaml_text(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("yaml") / "recipe.yaml"
    path.write_bytes(text.encode("utf-8"))
    with contextlib.suppress(InputError):
        MergeRecipe.from_yaml(path)


LAYER_PATTERNS = st.sampled_from(
    ["text_embed", r"blocks\.0\.", "(", r"^(.|..)+[XY]$", "((a{1000}){1000})", "[", "*", "", "x{2,1}"]
) | st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
WEIGHT_TEXT = st.sampled_from(["1", "0", "-1", "nan", "inf", "1e308", "1e999", "", "x", "0.5", " 2 "]) | st.text(
    max_size=6
)


@FUZZ
@given(
    rule=st.tuples(LAYER_PATTERNS, st.lists(WEIGHT_TEXT, min_size=0, max_size=3)).map(
        lambda parts: f"{parts[0]}={','.join(parts[1])}"
    )
    | st.text(max_size=60)
)
def test_layer_weight_strings(sources, monkeypatch, rule):
    import hf_tts.merge.plan as plan_module

    monkeypatch.setattr(plan_module, "LAYER_RULE_TIMEOUT_S", 0.05)

    def recipe() -> MergeRecipe:
        return MergeRecipe([str(sources[0]), str(sources[1])], layer_weights=[LayerRule.parse(rule)])

    plan = _plan_or_input_error(recipe)
    if plan is not None:
        assert any(task.rule is not None for task in plan.tasks)


FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [1e308, -1e308, 3.4e38, 1e38, 1e-320, 0.0, 65504.0, 1e5]
)


@FUZZ
@given(
    weights=st.lists(FLOATS, min_size=2, max_size=2),
    method=st.sampled_from(["linear", "task_arithmetic", "ties"]),
    scale=FLOATS,
    dtype=st.sampled_from(["float32", "float16", "bfloat16"]),
    normalize=st.booleans(),
)
def test_weight_lists_merge_or_refuse(sources, tmp_path_factory, weights, method, scale, dtype, normalize):
    """Valid numbers give a merge whose every tensor is finite in the output dtype; anything else an InputError
    (before writing, or from the overflow check while streaming)."""
    base = str(sources[2]) if method != "linear" else None
    recipe = MergeRecipe([str(sources[0]), str(sources[1])], weights, method, base, normalize, scale=scale, dtype=dtype)
    plan = _plan_or_input_error(lambda: recipe)
    if plan is None:
        return
    folder = tmp_path_factory.mktemp("weights")
    try:
        (path,) = write_weight_shards(plan, folder, DistanceStats(len(plan.sources)), plan.shards)
    except InputError as error:
        assert "NaN or Inf" in str(error)
        return
    reader = MappedSafetensors(path)
    for key in reader:
        assert torch.isfinite(reader.tensor(key)).all(), key


HEADER_DTYPES = st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "BOOL", "U16", "F8_E4M3", "X", 5])
DIMENSION = st.integers(min_value=-2, max_value=6) | st.sampled_from([True, 1.5, "2", 2**70])
ENTRY = st.fixed_dictionaries(
    {
        "dtype": HEADER_DTYPES,
        "shape": st.lists(DIMENSION, max_size=3) | SCALARS,
        "data_offsets": st.lists(st.integers(min_value=-4, max_value=300) | SCALARS, min_size=0, max_size=3),
    },
    optional={"extra": SCALARS},
)
HEADERS = st.dictionaries(
    st.sampled_from(["w", "x.weight", "y", "__metadata__", ""]) | st.text(max_size=5), ENTRY | DOCUMENTS, max_size=4
)


def _consistent_header(entries: list[tuple[str, list[int]]]) -> tuple[dict, int]:
    header, offset = {}, 0
    for key, shape in entries:
        size = 4 * math.prod(shape)
        header[key] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    return header, offset


@FUZZ
@given(
    header=HEADERS
    | st.lists(st.tuples(st.text(min_size=1, max_size=5), st.lists(st.integers(0, 4), max_size=2)), max_size=3).map(
        lambda entries: _consistent_header(entries)[0]
    ),
    blob=st.binary(max_size=300),
    prefix=st.sampled_from(["exact", "short", "huge", "random"]),
    raw=st.binary(max_size=8),
    duplicate=st.booleans(),
)
def test_safetensors_headers(tmp_path_factory, header, blob, prefix, raw, duplicate):
    """Random headers and byte blobs: the merge's reader opens the file (and reads every tensor) or refuses it."""
    text = json.dumps(header)
    if duplicate and header:  # a repeated key is only expressible in raw JSON
        key = json.dumps(next(iter(header)))
        text = text[:-1] + f",{key}:{json.dumps(next(iter(header.values())))}}}"
    encoded = text.encode()
    length = {"exact": len(encoded), "short": max(len(encoded) - 3, 0), "huge": 2**63, "random": None}[prefix]
    head = struct.pack("<Q", length) if length is not None else raw
    path = tmp_path_factory.mktemp("st") / "model.safetensors"
    path.write_bytes(head + encoded + blob)
    before = path.read_bytes()
    try:
        reader = MappedSafetensors(path)
    except InputError:
        assert path.read_bytes() == before
        return
    for key, info in reader.infos().items():
        assert reader.tensor(key).shape == info.shape
        buffer = torch.empty(max(info.numel, 1), dtype=info.dtype)
        assert reader.read(key, 0, buffer).numel() == info.numel
    assert path.read_bytes() == before


def test_documents_strategy_smoke(sources):
    """The recipe strategy reaches valid plans (the properties above test more than the error paths)."""
    document = yaml.safe_load(MergeRecipe([str(sources[0]), str(sources[1])]).to_yaml())
    assert build_plan(MergeRecipe.from_document(document)).recipe.models == [str(sources[0]), str(sources[1])]
