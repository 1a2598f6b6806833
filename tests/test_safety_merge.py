"""Merge safety (issue 12): every hostile or broken input found by hand gives exit 2 with one line, writes nothing,
and leaves the inputs as they were. Each test builds the exact input of a finding."""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch
import yaml
from merge_utils import make_f5_folder, make_xtts_checkpoint, tree_sha256, weights
from safetensors.torch import save_file

import hf_tts
import hf_tts.merge.write as merge_write
from hf_tts.cli import main
from hf_tts.errors import InputError
from hf_tts.merge import MergeRecipe


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("safety_sources")
    return [make_f5_folder(root / name, seed) for seed, name in enumerate(["a", "b", "base"])]


@pytest.fixture
def untouched(folders):
    """Fails the test if any source folder changed."""
    before = [tree_sha256(folder) for folder in folders]
    yield
    assert [tree_sha256(folder) for folder in folders] == before


def _cli_error(capsys, argv: list[str]) -> str:
    """Run `hf-tts merge ...`; assert exit 2 with exactly one stderr line, return it."""
    capsys.readouterr()  # drop what building the inputs printed (save_pretrained's progress bar)
    try:
        code = main(["merge", *map(str, argv)])
    except SystemExit as exit_:  # argparse refuses an option value itself
        code = exit_.code
    error = capsys.readouterr().err
    assert code == 2, error
    assert error.count("\n") == 1, error
    return error


def _entries(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


# --- --out placement -------------------------------------------------------------------------------------------------


def test_out_dot_with_overwrite_inside_a_source_is_refused(folders, untouched, capsys, monkeypatch):
    a, b, _ = folders
    monkeypatch.chdir(a)
    error = _cli_error(capsys, [a, b, "--out", ".", "--overwrite"])
    assert "current folder" in error or "is the input" in error
    assert _cli_error(capsys, [a, b, "--out", ".", "--dry-run"])  # --dry-run still validates a given --out


@pytest.mark.parametrize(
    "placement, message",
    [("equal", "is the input"), ("inside", "lies inside the input"), ("contains", "contains the input")],
)
def test_out_is_inside_or_contains_an_input(tmp_path, capsys, placement, message):
    root = tmp_path / "models"
    a, b = make_f5_folder(root / "a", 0), make_f5_folder(root / "b", 1)
    (root / "config.json").write_text("{}")  # so that --overwrite alone would allow replacing `root`
    before = tree_sha256(root)
    out = {"equal": a, "inside": a / "sub", "contains": root}[placement]
    assert message in _cli_error(capsys, [a, b, "--out", out, "--overwrite"])
    assert tree_sha256(root) == before and not (a / "sub").exists()


def test_out_inside_an_upstream_file_or_recipe_is_refused(folders, tmp_path, capsys):
    recipe_folder = tmp_path / "recipes"
    recipe_folder.mkdir()
    recipe = recipe_folder / "recipe.yaml"
    recipe.write_text(MergeRecipe([str(folders[0]), str(folders[1])]).to_yaml())
    assert "contains the input" in _cli_error(capsys, ["--recipe", recipe, "--out", recipe_folder, "--overwrite"])
    assert "is the input" in _cli_error(capsys, ["--recipe", recipe, "--out", recipe, "--overwrite"])
    assert _entries(recipe_folder) == ["recipe.yaml"]


def test_out_inside_a_hub_snapshot_is_refused(folders, tmp_path, monkeypatch, capsys):
    """A Hub source resolves to a snapshot folder on disk; an --out inside it (or equal to it) is refused too."""
    import huggingface_hub

    snapshot = tmp_path / "cache" / "snapshot"
    shutil.copytree(folders[1], snapshot)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, token=None: str(snapshot))
    before = tree_sha256(snapshot)
    assert "lies inside the input" in _cli_error(capsys, [folders[0], "user/model", "--out", snapshot / "merged"])
    error = _cli_error(capsys, [folders[0], "user/model", "--out", snapshot, "--overwrite"])
    assert "is the input" in error or "contains the input" in error
    assert tree_sha256(snapshot) == before


def test_folder_created_at_out_during_the_merge_is_kept(folders, tmp_path, monkeypatch, capsys, untouched):
    """The existence check is repeated at the final rename: a folder that appears at --out while the merge runs is
    neither deleted nor mixed with the merge, and the merge fails with exit 2."""
    out = tmp_path / "out"
    stream_merge = merge_write.stream_merge

    def appearing(*args, **kwargs):
        out.mkdir(exist_ok=True)
        (out / "theirs.txt").write_text("someone else's")
        return stream_merge(*args, **kwargs)

    monkeypatch.setattr(merge_write, "stream_merge", appearing)
    error = _cli_error(capsys, [folders[0], folders[1], "--out", out])
    assert "already exists" in error or "another process wrote" in error
    assert _entries(out) == ["theirs.txt"] and (out / "theirs.txt").read_text() == "someone else's"
    assert _entries(tmp_path) == ["out"]  # no staging or lock left behind


def test_two_merges_to_the_same_new_out_exactly_one_wins(folders, tmp_path, monkeypatch, capsys, untouched):
    """Simulated race: while merge 1 streams, merge 2 (other weights) runs to completion at the same --out. Merge 2
    wins; merge 1 fails with exit 2 and neither deletes nor mixes into merge 2's output."""
    out = tmp_path / "out"
    stream_merge = merge_write.stream_merge
    started = []

    def racing(*args, **kwargs):
        if not started:
            started.append(1)
            assert main(["merge", str(folders[0]), str(folders[1]), "--weights", "1", "3", "--out", str(out)]) == 0
        return stream_merge(*args, **kwargs)

    monkeypatch.setattr(merge_write, "stream_merge", racing)
    code = main(["merge", str(folders[0]), str(folders[1]), "--weights", "1", "1", "--out", str(out)])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and "hf-tts merge: error:" in error
    recipe = MergeRecipe.from_yaml(out / "merge_recipe.yaml")
    assert recipe.weights == [1.0, 3.0]
    assert _entries(tmp_path) == ["out"]


# --- numbers -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        (["--weights", "nan", "1"], "not a finite number"),
        (["--weights", "1", "inf"], "not a finite number"),
        (["--weights", "1e308", "1e308"], "overflow when summed"),
        (["--density", "0"], "outside"),
        (["--density", "1.5"], "outside"),
        (["--density", "nan"], "not a finite number"),
        (["--lambda", "inf"], "not a finite number"),
    ],
)
def test_bad_numbers_refused_before_writing(folders, tmp_path, capsys, untouched, options, message):
    assert message in _cli_error(capsys, [folders[0], folders[1], *options, "--out", tmp_path / "out"])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"weights": [math.nan, 1.0]}, "must be a finite number"),
        ({"weights": [1e308, 1e308]}, "overflow when summed"),
        ({"weights": [1.0, -1.0 + 1e-300]}, "sum to zero"),
        ({"weights": [1e39, 1.0], "method": "task_arithmetic"}, "exceed float32's range"),
        ({"scale": -1e39, "method": "task_arithmetic"}, "exceeds float32's range"),
        ({"weights": ["1", "2"]}, "must be a number"),
        ({"weights": [True, 1.0]}, "must be a number"),
        ({"density": 0.0, "method": "ties"}, "density must be in"),
        ({"density": 2.0, "method": "ties"}, "density must be in"),
        ({"scale": math.inf, "method": "task_arithmetic"}, "must be a finite number"),
        ({"layer_weights": ["text_embed=nan,1"]}, "not finite"),
        ({"layer_weights": ["text_embed=1e999,1"]}, "not finite"),
    ],
)
def test_bad_numbers_in_python(folders, tmp_path, untouched, kwargs, message):
    if kwargs.get("method") in ("ties", "task_arithmetic"):
        kwargs["base"] = folders[2]
    with pytest.raises(InputError, match=message):
        hf_tts.merge(folders[:2], out_dir=tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_weights_whose_sum_is_tiny_refused(folders, tmp_path):
    with pytest.raises(InputError, match="dividing by their sum overflows"):
        hf_tts.merge(folders, [1e38, -1e38, 1e-300], out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "options",
    [
        ["--method", "task_arithmetic", "--lambda", "1e8", "--dtype", "float16"],
        ["--weights", "1e5", "1e5", "--no-normalize", "--dtype", "float16"],
        ["--weights", "1e38", "1e38", "--no-normalize", "--dtype", "bfloat16"],
    ],
)
def test_overflowing_merge_names_the_tensor_and_writes_nothing(folders, tmp_path, capsys, untouched, options):
    if "task_arithmetic" in options:
        options = [*options, "--base", str(folders[2])]
    error = _cli_error(capsys, [folders[0], folders[1], *options, "--out", tmp_path / "out"])
    assert "the merged tensor '" in error and "NaN or Inf" in error and "--dtype float32" in error
    assert ("lower --lambda" in error) == ("task_arithmetic" in options)
    assert _entries(tmp_path) == []


def test_large_but_valid_numbers_merge_and_the_recipe_replays(folders, tmp_path, untouched):
    """Weights near the float range and a large lambda in fp32 are valid: the merge succeeds, its recipe (as written)
    replays to the same bytes."""
    path, _ = hf_tts.merge(folders[:2], [1e38, 3e38], out_dir=tmp_path / "one")
    again, _ = hf_tts.merge(recipe=path / "merge_recipe.yaml", out_dir=tmp_path / "two" / "one")
    assert tree_sha256(path) == tree_sha256(again)
    path, _ = hf_tts.merge(
        folders[:2], [0.5, 0.25], method="task_arithmetic", base=folders[2], scale=1e8, out_dir=tmp_path / "lam"
    )
    assert all(torch.isfinite(value).all() for value in weights(path).values())
    again, _ = hf_tts.merge(recipe=path / "merge_recipe.yaml", out_dir=tmp_path / "two" / "lam")
    assert (path / "model.safetensors").read_bytes() == (again / "model.safetensors").read_bytes()


# --- recipes -------------------------------------------------------------------------------------------------------


def _recipe(folders, tmp_path: Path, **changes) -> Path:
    document = yaml.safe_load(MergeRecipe([str(folders[0]), str(folders[1])]).to_yaml())
    for dotted, value in changes.items():
        target = document
        *parents, last = dotted.split("__")
        for parent in parents:
            target = target[int(parent)] if isinstance(target, list) else target[parent]
        target[last] = value
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"allow_config_mismatch": "false"}, "allow_config_mismatch must be true or false"),
        ({"allow_config_mismatch": 0}, "allow_config_mismatch must be true or false"),
        ({"parameters__normalize": "no"}, "parameters.normalize must be true, false or null"),
        ({"parameters__lambda": "1e8"}, "write 1.0e+8"),
        ({"parameters__lambda": True}, "parameters.lambda must be a number"),
        ({"parameters__density": 1.5}, "density must be in"),
        ({"parameters__density": ".nan"}, "parameters.density must be a number"),
        ({"parameters__extra": 1}, "unknown keys extra; valid keys: normalize, lambda, density"),
        ({"parameters": [1, 2]}, "parameters must be a mapping"),
        ({"models__0__weight": "0.5"}, "models[0].weight must be a number"),
        ({"models__0__weight": True}, "models[0].weight must be a number"),
        ({"models__0__model": 5}, "models[0].model must be a non-empty string"),
        ({"models__0__extra": 5}, "models[0]: unknown keys extra"),
        ({"models": {"a": 1}}, "models must be a list"),
        ({"layer_weights": "x=1,1"}, "layer_weights must be a list"),
        ({"layer_weights": [{"pattern": 1, "weights": [1, 1]}]}, "layer_weights[0].pattern must be"),
        ({"layer_weights": [{"pattern": "x", "weights": "1,1"}]}, "layer_weights[0].weights must be a list"),
        ({"layer_weights": [{"pattern": "x"}]}, "layer_weights[0]: missing weights"),
        ({"max_shard_size": True}, "max_shard_size must be a size"),
        ({"max_shard_size": -5}, "must be positive"),
        ({"dtype": 5}, "dtype must be a non-empty string"),
        ({"merge_method": ["linear"]}, "merge_method must be a non-empty string"),
        ({"merge_methods": "linear"}, "unknown keys merge_methods; valid keys: merge_method, models"),
    ],
)
def test_recipe_types_are_strict(folders, tmp_path, capsys, untouched, changes, message):
    recipe = _recipe(folders, tmp_path, **changes)
    error = _cli_error(capsys, ["--recipe", recipe, "--out", tmp_path / "out"])
    assert message in error and (str(recipe) in error or "density" in message or "positive" in message)
    assert _entries(tmp_path) == ["recipe.yaml"]


def test_quoted_false_does_not_merge_mismatched_configs(folders, tmp_path, capsys):
    """The finding: F5 v0 and v1 merged because `allow_config_mismatch: "false"` was read as true."""
    other = make_f5_folder(tmp_path / "v0", 5, conv_layers=2)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"models:\n- model: {folders[0]}\n- model: {other}\nallow_config_mismatch: 'false'\n", encoding="utf-8"
    )
    assert "allow_config_mismatch must be true or false" in _cli_error(capsys, ["--recipe", recipe, "--dry-run"])
    recipe.write_text(f"models:\n- model: {folders[0]}\n- model: {other}\nallow_config_mismatch: false\n")
    assert "configs of source 1" in _cli_error(capsys, ["--recipe", recipe, "--dry-run"])


def test_python_recipe_values_are_strict(folders, tmp_path):
    for kwargs, message in [
        ({"normalize": "no"}, "normalize must be true, false or null"),
        ({"allow_config_mismatch": "false"}, "allow_config_mismatch must be true or false"),
        ({"layer_weights": "x=1,1"}, "layer_weights must be a list"),
        ({"max_shard_size": 1.5}, "max_shard_size must be a size"),
    ]:
        with pytest.raises(InputError, match=message):
            hf_tts.merge(folders[:2], out_dir=tmp_path / "out", **kwargs)
    with pytest.raises(InputError, match="source 2"):
        hf_tts.merge(recipe=MergeRecipe([str(folders[0]), 7]), out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _alias_bomb() -> str:
    """The classic "billion laughs" in YAML, under 1 KB: nine levels of nine aliases each."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for previous, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [{','.join(['*' + previous] * 9)}]")
    return "\n".join(lines) + "\nmodels: *i\n"


@pytest.mark.parametrize(
    "content, message",
    [
        (_alias_bomb().encode(), "anchors and aliases"),
        (b"models: " + b"[" * 50_000 + b"]" * 50_000 + b"\n", "nested deeper"),
        (b"models: !!python/object:os.system [x]\n", "tags"),
        (b"models:\n- model: \xff\xfe\n", "not UTF-8"),
        (b"# " + b"x" * (1 << 20) + b"\nmodels: []\n", "larger than"),
        (b"models: [unclosed\n", "not valid YAML"),
        (b"- just\n- a list\n", "must be a mapping"),
        (b"", "must be a mapping"),
    ],
)
def test_hostile_recipe_files(tmp_path, capsys, content, message):
    assert len(_alias_bomb()) < 800
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(content)
    assert message in _cli_error(capsys, ["--recipe", recipe, "--out", tmp_path / "out"])
    assert _entries(tmp_path) == ["recipe.yaml"]


# --- --layer-weights regexes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rule, message",
    [
        (r"^(.|..)+[XY]$=1,1", "took over"),  # exponential backtracking on every tensor name
        (r"^(\w+\.?)+Z$=1,1", "matches no floating-point tensor"),  # the finding's pattern: finishes, matches nothing
        ("((a{1000}){1000}){1000}=1,1", "counted repeats"),  # minutes to compile
        ("x" * 1001 + "=1,1", "longer than 1000"),
        ("([=1,1", "not a valid regular expression"),
        ("*text_embed=1,1", "not a valid regular expression"),
        ("=1,1", "expected REGEX=W1,W2"),
        ("text_embed=1,,1", "is not a number"),
    ],
)
def test_layer_weight_patterns(folders, tmp_path, capsys, monkeypatch, rule, message):
    import hf_tts.merge.plan as plan

    monkeypatch.setattr(plan, "LAYER_RULE_TIMEOUT_S", 0.05)
    error = _cli_error(capsys, [folders[0], folders[1], "--layer-weights", rule, "--out", tmp_path / "out"])
    assert message in error
    assert _entries(tmp_path) == []


# --- push target -----------------------------------------------------------------------------------------------------


def test_push_target_checked_before_anything_is_written(folders, tmp_path, capsys, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    def no_plan(*args, **kwargs):
        raise AssertionError("the merge was planned before the push target was checked")

    monkeypatch.setattr("hf_tts.merge.build_plan", no_plan)
    out = tmp_path / "out"
    error = _cli_error(capsys, [folders[0], folders[1], "--out", out, "--push-to-hub", "bad id!!"])
    assert "invalid push target 'bad id!!'" in error
    monkeypatch.setattr(constants, "ENDPOINT", "https://huggingface.co")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert "needs a token" in _cli_error(capsys, [folders[0], folders[1], "--out", out, "--push-to-hub", "user/m"])
    assert _entries(tmp_path) == []


# --- damaged inputs ----------------------------------------------------------------------------------------------------


def _write_safetensors(path: Path, header: str, data: bytes) -> None:
    raw = header.encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def _two_tensor_header(metadata: str = '{"format":"pt"}', first=(0, 16), second=(16, 32)) -> str:
    return (
        f'{{"__metadata__":{metadata},"x.weight":{{"dtype":"F32","shape":[4],"data_offsets":[{first[0]},{first[1]}]}},'
        f'"y.weight":{{"dtype":"F32","shape":[4],"data_offsets":[{second[0]},{second[1]}]}}}}'
    )


DATA = struct.pack("<8f", *range(8))


@pytest.mark.parametrize(
    "header, data, message",
    [
        # A key repeated with the bytes of another tensor: json.loads would keep the last, merging the wrong data.
        (
            _two_tensor_header()[:-1] + ',"x.weight":{"dtype":"F32","shape":[4],"data_offsets":[16,32]}}',
            DATA,
            "twice",
        ),
        (_two_tensor_header(metadata='["format","pt"]'), DATA, "__metadata__"),
        (_two_tensor_header(metadata='{"format":1}'), DATA, "__metadata__"),
        (_two_tensor_header(), DATA + b"garbage!", "trailing"),
        (_two_tensor_header(second=(8, 24)), DATA, "overlaps"),
        (_two_tensor_header(second=(16, 48)), DATA, "needs 16 bytes"),
        (_two_tensor_header(), DATA[:20], "truncated"),
        ('{"x.weight":{"dtype":"F32","shape":[4],"data_offsets":[0,16]', DATA[:16], "not valid JSON"),
        ('{"x.weight":{"dtype":"F99","shape":[4],"data_offsets":[0,16]}}', DATA[:16], "unknown dtype"),
        ('{"x.weight":{"dtype":"U16","shape":[8],"data_offsets":[0,16]}}', DATA[:16], "merging does not support"),
    ],
)
def test_damaged_safetensors_headers(tmp_path, capsys, header, data, message):
    good = make_f5_folder(tmp_path / "good", 0)
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    _write_safetensors(bad / "model.safetensors", header, data)
    before = tree_sha256(bad)
    error = _cli_error(capsys, [good, bad, "--out", tmp_path / "out"])
    assert message in error and "model.safetensors" in error
    assert tree_sha256(bad) == before and not (tmp_path / "out").exists()


def test_damaged_index_and_config(tmp_path, capsys):
    good = make_f5_folder(tmp_path / "good", 0)
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    (tmp_path / "outside.safetensors").write_bytes((bad / "model.safetensors").read_bytes())
    keys = list(weights(good))
    cases = [
        ({key: "../outside.safetensors" for key in keys}, "not a shard file name"),
        ({key: "model.safetensors" for key in keys[:-1]}, "does not match its shards"),
        ({**{key: "model.safetensors" for key in keys}, "ghost": "model.safetensors"}, "does not match its shards"),
        ("not a map", "no 'weight_map'"),
    ]
    for weight_map, message in cases:
        (bad / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        error = _cli_error(capsys, [good, bad, "--out", tmp_path / "out"])
        assert message in error and "model.safetensors.index.json" in error
    (bad / "model.safetensors.index.json").write_text("{broken")
    assert "is not a readable JSON file" in _cli_error(capsys, [good, bad, "--out", tmp_path / "out"])
    (bad / "model.safetensors.index.json").unlink()
    for content, message in [("{broken", "not a readable JSON file"), ("[1, 2]", "must hold a JSON object")]:
        (bad / "config.json").write_text(content)
        error = _cli_error(capsys, [good, bad, "--out", tmp_path / "out"])
        assert message in error and "config.json" in error
    (bad / "config.json").write_text(json.dumps({**json.loads((good / "config.json").read_text()), "dim": -1}))
    assert "dim" in _cli_error(capsys, [good, bad, "--out", tmp_path / "out"])
    assert not (tmp_path / "out").exists()


def test_non_float_and_odd_tensors(tmp_path, capsys):
    """Integer tensors are copied when every source agrees (documented) and refused otherwise; tensors that have no
    meaningful average (sparse, complex, unsupported dtypes) or NaN in a copied tensor are refused by name."""
    first = make_f5_folder(tmp_path / "a", 0)
    second = make_f5_folder(tmp_path / "b", 1)
    for folder in (first, second):
        state = weights(folder)
        state["counter"] = torch.tensor([3], dtype=torch.int64)
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    path, report = hf_tts.merge([first, second], out_dir=tmp_path / "out")
    assert weights(path)["counter"].tolist() == [3]
    assert "counter" in [task.key for task in report.plan.tasks if not task.merged]
    for name, value, message in [
        ("sparse", torch.eye(3).to_sparse(), "cannot be merged"),
        ("complex", torch.ones(3, dtype=torch.complex64), "cannot be merged"),
        ("uint16", torch.ones(3, dtype=torch.uint16), "merging does not support"),
    ]:
        sources = []
        for seed in (0, 1):
            checkpoint = make_xtts_checkpoint(tmp_path / f"x{name}{seed}", seed)
            loaded = torch.load(checkpoint, weights_only=True)
            loaded["model"][f"xtts.gpt.{name}"] = value
            torch.save(loaded, checkpoint)
            sources.append(checkpoint)
        assert message in _cli_error(capsys, [*sources, "--out", tmp_path / f"out_{name}"])
    checkpoint = make_xtts_checkpoint(tmp_path / "intkey", 0)
    loaded = torch.load(checkpoint, weights_only=True)
    loaded["model"][5] = torch.ones(1)
    torch.save(loaded, checkpoint)
    assert "not a string" in _cli_error(capsys, [checkpoint, checkpoint, "--out", tmp_path / "out_intkey"])


def test_nan_in_a_copied_vocoder_is_named(tmp_path, capsys):
    first = make_f5_folder(tmp_path / "a", 0)
    second = make_f5_folder(tmp_path / "b", 1)
    for folder in (first, second):
        state = weights(folder)
        state["vocoder.head.bias"] = torch.tensor([0.0, math.nan])
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    error = _cli_error(capsys, [first, second, "--out", tmp_path / "out"])
    assert "'vocoder.head.bias' contains 1 NaN or Inf value" in error


# --- memory --------------------------------------------------------------------------------------------------------


def _peak_rss_reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets the peak resident set size (VmHWM)
        return True
    except OSError:
        return False


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def test_memory_does_not_grow_with_the_number_of_sources(tmp_path, monkeypatch):
    """300 sources of one 2^18-element tensor each: the merge's peak resident memory stays far below the 1 MiB per
    source per worker that slice buffers sized for a fixed slice length cost (300+ MiB here)."""
    if not _peak_rss_reset():
        pytest.skip("the peak resident set size cannot be reset here (/proc/self/clear_refs)")
    monkeypatch.setenv("HF_TTS_CACHE", "")
    template = make_f5_folder(tmp_path / "template", 0)
    save_file({"w": torch.randn(1 << 18)}, tmp_path / "weights.safetensors")
    sources = []
    for index in range(300):
        folder = tmp_path / "sources" / f"s{index}"
        folder.mkdir(parents=True)
        shutil.copy(template / "config.json", folder / "config.json")
        os.link(tmp_path / "weights.safetensors", folder / "model.safetensors")  # same bytes, no extra disk
        sources.append(folder)
    from hf_tts.merge.plan import MergeRecipe as Recipe
    from hf_tts.merge.plan import build_plan

    build_plan(Recipe(sources[:2]))  # imports and caches warmed up before measuring
    assert _peak_rss_reset()
    baseline = _status_kib("VmRSS")
    path, report = hf_tts.merge(sources, out_dir=tmp_path / "out")
    growth_mib = (_status_kib("VmHWM") - baseline) / 1024
    assert len(report.plan.sources) == 300
    assert torch.allclose(weights(path)["w"], weights(sources[0])["w"])
    assert growth_mib < 96, f"peak memory grew by {growth_mib:.0f} MiB for 300 sources"
