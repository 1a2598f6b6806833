"""Merge helper: numbers against hand-computed merges, every validation error, inputs untouched, determinism, card."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from merge_utils import VOCAB, make_f5_folder, rewrite_weights, tree_sha256, weights
from safetensors import safe_open
from transformers import AutoModel

import hf_tts
from hf_tts.errors import CheckpointMismatchError, InputError
from hf_tts.merge import MergeRecipe
from hf_tts.merge.plan import build_plan

# Every comparison is fp32 output against a float64 hand computation from the input files.
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("merge_sources")
    return [make_f5_folder(root / name, seed) for seed, name in enumerate(["a", "b", "c", "base"])]


def _as64(state):
    return {key: value.double().numpy() for key, value in state.items() if value.is_floating_point()}


def _assert_close(output: dict[str, torch.Tensor], expected: dict[str, np.ndarray]) -> None:
    assert set(expected) <= set(output)
    for key, value in expected.items():
        np.testing.assert_allclose(output[key].double().numpy(), value, rtol=0, atol=TOLERANCE, err_msg=key)


def test_linear_weighted_equals_hand_average(folders, tmp_path):
    a, b, c = (_as64(weights(folder)) for folder in folders[:3])
    path, report = hf_tts.merge(folders[:3], [1.0, 2.0, 5.0], out_dir=tmp_path / "out")
    expected = {key: (a[key] + 2 * b[key] + 5 * c[key]) / 8 for key in a}
    _assert_close(weights(path), expected)
    # Not normalised: the plain weighted sum.
    path, _ = hf_tts.merge(folders[:2], [0.5, 0.25], out_dir=tmp_path / "raw", normalize=False)
    _assert_close(weights(path), {key: 0.5 * a[key] + 0.25 * b[key] for key in a})
    # The result is a loadable model folder with the donor's vocab.
    model = AutoModel.from_pretrained(tmp_path / "out", dtype=torch.float32)
    assert isinstance(model, hf_tts.F5TTSModel)
    assert (tmp_path / "out" / "vocab.txt").read_text() == "\n".join(VOCAB) + "\n"
    assert len(report.distances) >= 4 and all(len(row) == 3 for row in report.distances.values())


def test_layer_rules_first_match_wins(folders, tmp_path):
    a, b = (_as64(weights(folder)) for folder in folders[:2])
    path, report = hf_tts.merge(
        folders[:2],
        [1.0, 1.0],
        out_dir=tmp_path / "out",
        layer_weights=["text_embed=1,0", r"transformer_blocks\.1\.=1,3", "transformer_blocks=0,1"],
    )
    output = weights(path)
    expected = {}
    for key in a:
        if "text_embed" in key:
            expected[key] = a[key]
        elif "transformer_blocks.1." in key:
            expected[key] = (a[key] + 3 * b[key]) / 4
        elif "transformer_blocks" in key:
            expected[key] = b[key]
        else:
            expected[key] = (a[key] + b[key]) / 2
    _assert_close(output, expected)
    assert any("text_embed" in key for key in a) and any("transformer_blocks.1." in key for key in a)
    card = (path / "README.md").read_text()
    assert "| `text_embed` | 1.0, 0.0 |" in card


def _slerp64(v0: np.ndarray, v1: np.ndarray, t: float) -> np.ndarray:
    u0, u1 = v0 / np.linalg.norm(v0), v1 / np.linalg.norm(v1)
    dot = float(np.sum(u0 * u1))
    if abs(dot) > 0.9995:
        return (1 - t) * v0 + t * v1
    theta = math.acos(dot)
    return (math.sin((1 - t) * theta) * v0 + math.sin(t * theta) * v1) / math.sin(theta)


def test_slerp_matches_formula(folders, tmp_path):
    a, b = (_as64(weights(folder)) for folder in folders[:2])
    path, _ = hf_tts.merge(folders[:2], [3.0, 1.0], method="slerp", out_dir=tmp_path / "out")
    _assert_close(weights(path), {key: _slerp64(a[key], b[key], 0.25) for key in a})


def test_task_arithmetic_matches_formula(folders, tmp_path):
    a, b, base = (_as64(weights(folder)) for folder in (folders[0], folders[1], folders[3]))
    path, _ = hf_tts.merge(
        folders[:2], [0.5, 1.5], method="task_arithmetic", base=folders[3], scale=0.8, out_dir=tmp_path / "out"
    )
    expected = {key: base[key] + 0.8 * (0.5 * (a[key] - base[key]) + 1.5 * (b[key] - base[key])) for key in a}
    _assert_close(weights(path), expected)


def _ties64(base, deltas_in, weights_, density, scale):
    deltas = []
    for delta in deltas_in:
        flat = delta.reshape(-1).copy()
        keep = int(density * flat.size)
        order = np.argsort(-np.abs(flat), kind="stable")
        flat[order[keep:]] = 0
        deltas.append(flat.reshape(delta.shape))
    weighted = [w * d for w, d in zip(weights_, deltas)]
    sign = np.where(np.sum(weighted, axis=0) >= 0, 1.0, -1.0)
    masks = [np.sign(wd) == sign for wd in weighted]
    mixed = np.sum([wd * m for wd, m in zip(weighted, masks)], axis=0)
    divisor = np.sum([w * m for w, m in zip(weights_, masks)], axis=0)
    divisor[divisor == 0] = 1
    return base + scale * mixed / divisor


def test_ties_matches_formula(folders, tmp_path):
    a, b, c, base = (_as64(weights(folder)) for folder in folders)
    path, _ = hf_tts.merge(
        folders[:3], [1.0, 0.5, 2.0], method="ties", base=folders[3], density=0.6, out_dir=tmp_path / "out"
    )
    expected = {
        key: _ties64(base[key], [a[key] - base[key], b[key] - base[key], c[key] - base[key]], [1.0, 0.5, 2.0], 0.6, 1.0)
        for key in a
    }
    _assert_close(weights(path), expected)


def test_dtypes(folders, tmp_path):
    a, b = (_as64(weights(folder)) for folder in folders[:2])
    path, _ = hf_tts.merge(folders[:2], out_dir=tmp_path / "bf16", dtype="bfloat16")
    output = weights(path)
    assert all(value.dtype == torch.bfloat16 for value in output.values())
    for key in a:  # the fp32 average rounded once to bf16
        expected = torch.from_numpy((a[key] + b[key]) / 2).float().to(torch.bfloat16)
        assert torch.equal(output[key], expected), key
    # fp16 inputs are accumulated in fp32 and stored as fp16; fp64 inputs in fp64.
    for dtype in (torch.float16, torch.float64):
        copies = []
        for index in range(2):
            copy = tmp_path / f"{dtype}_{index}"
            make_f5_folder(copy, index)
            rewrite_weights(copy, lambda state, dtype=dtype: state.update({k: v.to(dtype) for k, v in state.items()}))
            copies.append(copy)
        inputs = [_as64(weights(copy)) for copy in copies]
        path, _ = hf_tts.merge(copies, out_dir=tmp_path / f"out_{dtype}")
        output = weights(path)
        for key in inputs[0]:
            assert output[key].dtype == dtype
            expected = torch.from_numpy((inputs[0][key] + inputs[1][key]) / 2).to(dtype)
            assert torch.allclose(
                output[key].double(), expected.double(), atol=1e-3 if dtype == torch.float16 else 1e-12
            )


def test_inputs_untouched_and_output_deterministic(folders, tmp_path):
    before = [tree_sha256(folder) for folder in folders]
    # Same folder name in two places: the card names the folder, everything else must match byte for byte.
    first, _ = hf_tts.merge(folders[:3], [1, 2, 3], out_dir=tmp_path / "1" / "out", max_shard_size="60KB")
    second, _ = hf_tts.merge(folders[:3], [1, 2, 3], out_dir=tmp_path / "2" / "out", max_shard_size="60KB")
    assert [tree_sha256(folder) for folder in folders] == before
    one, two = tree_sha256(first), tree_sha256(second)
    assert one == two
    shards = sorted(name for name in one if name.startswith("model-"))
    assert len(shards) > 1 and "model.safetensors.index.json" in one
    model = AutoModel.from_pretrained(first, dtype=torch.float32)
    reference = weights(folders[0])
    merged_keys = set()
    for shard in shards:
        with safe_open(first / shard, "pt") as handle:
            merged_keys |= set(handle.keys())
    assert merged_keys == set(reference) and isinstance(model, hf_tts.F5TTSModel)


def test_recipe_round_trip_reproduces_bytes(folders, tmp_path):
    path, _ = hf_tts.merge(
        folders[:2], [2, 1], out_dir=tmp_path / "out", layer_weights=["time_embed=1,1"], dtype="float32"
    )
    again, _ = hf_tts.merge(recipe=path / "merge_recipe.yaml", out_dir=tmp_path / "again" / "out")
    assert tree_sha256(path) == tree_sha256(again)
    recipe = MergeRecipe.from_yaml(path / "merge_recipe.yaml")
    assert recipe.weights == [2.0, 1.0] and recipe.layer_weights[0].pattern == "time_embed"


def test_recipe_paths_are_relative_to_the_recipe_folder(folders, tmp_path, monkeypatch, capsys):
    """--recipe reads relative sources, base and config_from against the recipe's folder, not the current one (where
    same-named decoy folders hold other weights); the saved recipe records absolute paths, so it replays from
    anywhere to the same bytes; a missing relative source is named where it was looked for."""
    from hf_tts.cli import main

    project = tmp_path / "project"
    (project / "recipes").mkdir(parents=True)
    for name, folder in zip(("a", "b", "base"), (folders[0], folders[1], folders[3])):
        shutil.copytree(folder, project / name)
    elsewhere = tmp_path / "elsewhere"
    for seed, name in enumerate(("a", "b", "base"), start=10):
        make_f5_folder(elsewhere / name, seed)  # what a cwd-relative reading would pick up
    recipe = project / "recipes" / "recipe.yaml"
    recipe.write_text(
        "merge_method: task_arithmetic\nmodels:\n- model: ../a\n  weight: 1.0\n- model: ../b\n  weight: 2.0\n"
        "base_model: ../base\nconfig_from: ../b\n"
    )
    monkeypatch.chdir(elsewhere)
    assert main(["merge", "--recipe", str(recipe), "--out", str(tmp_path / "out")]) == 0
    expected, _ = hf_tts.merge(
        [folders[0], folders[1]], [1.0, 2.0], "task_arithmetic", tmp_path / "direct", base=folders[3]
    )
    merged, direct = weights(tmp_path / "out"), weights(expected)
    assert merged.keys() == direct.keys() and all(torch.equal(merged[key], direct[key]) for key in direct)
    saved = MergeRecipe.from_yaml(tmp_path / "out" / "merge_recipe.yaml")
    assert saved.models == [str(project / "a"), str(project / "b")] and saved.base == str(project / "base")
    assert saved.config_from == str(project / "b")
    monkeypatch.chdir(project / "recipes")
    capsys.readouterr()
    assert main(["merge", "--recipe", str(tmp_path / "out" / "merge_recipe.yaml"), "--out", "../replay"]) == 0
    first, replay = tree_sha256(tmp_path / "out"), tree_sha256(project / "replay")
    assert first.pop("README.md") and replay.pop("README.md") and first == replay  # cards differ in the folder name
    card = (project / "replay" / "README.md").read_text().replace("./replay", "./out")
    assert card == (tmp_path / "out" / "README.md").read_text()

    recipe.write_text("models:\n- model: ../a\n- model: ../typo\n")
    capsys.readouterr()
    assert main(["merge", "--recipe", str(recipe), "--dry-run"]) == 2
    assert f"source {project / 'typo'} does not exist" in capsys.readouterr().err


def test_progress_bar_on_a_terminal_and_quiet_silences_it(folders, tmp_path, monkeypatch, capsys):
    """A bar over the bytes written, on a terminal only, for merges longer than PROGRESS_DELAY_S (0 here);
    --quiet silences it and the summary stays on stdout."""
    import sys

    from tqdm import tqdm

    import hf_tts.merge as merge_module
    from hf_tts.cli import main

    monkeypatch.setattr(merge_module, "PROGRESS_DELAY_S", 0.0)
    arguments = ["merge", str(folders[0]), str(folders[1])]
    assert main([*arguments, "--out", str(tmp_path / "plain")]) == 0
    assert capsys.readouterr().err == ""  # stderr is not a terminal: no bar
    monkeypatch.setattr(type(sys.stderr), "isatty", lambda self: True)
    assert main([*arguments, "--out", str(tmp_path / "loud")]) == 0
    err = capsys.readouterr().err
    # The bar counts the merged bytes (the output has the sources' tensors and dtypes).
    total = sum(value.numel() * value.element_size() for value in weights(folders[0]).values())
    size = tqdm.format_sizeof(total, divisor=1024)
    assert "merging: 100%" in err and f"{size}/{size}" in err
    assert main([*arguments, "--out", str(tmp_path / "quiet"), "--quiet"]) == 0
    out = capsys.readouterr()
    assert out.err == "" and "merged model written to" in out.out
    assert tree_sha256(tmp_path / "loud")["model.safetensors"] == tree_sha256(tmp_path / "quiet")["model.safetensors"]


def test_model_card_metadata(folders, tmp_path):
    path, _ = hf_tts.merge(folders[:2], [1, 1], out_dir=tmp_path / "out")
    card = ModelCard.load(path / "README.md")
    assert card.data.library_name == "hf-tts"
    assert card.data.pipeline_tag == "text-to-speech"
    assert {"merge", "hf-tts", "f5-tts"} <= set(card.data.tags)
    sha = tree_sha256(folders[0])["model.safetensors"]
    assert sha in card.text and "![cosine distance per block](merge_distance.png)" in card.text
    assert (path / "merge_distance.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (path / "merge_recipe.yaml").read_text() in card.text


def test_existing_output_needs_overwrite(folders, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="already exists"):
        hf_tts.merge(folders[:2], out_dir=out)
    # A folder that is not a model folder is never replaced, even with overwrite.
    with pytest.raises(InputError, match="holds other things than a model"):
        hf_tts.merge(folders[:2], out_dir=out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (out / "config.json").write_text("{}")
    hf_tts.merge(folders[:2], out_dir=out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()


def test_ctrl_c_mid_merge_leaves_nothing(folders, tmp_path, monkeypatch):
    """A KeyboardInterrupt while tensors stream out removes the temporary folder; an existing --out being replaced
    (--overwrite) stays as it was, and the inputs are untouched."""
    import hf_tts.merge.methods as methods

    before = {folder.name: tree_sha256(folder) for folder in folders[:2]}
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    (out / "config.json").write_text("{}")  # a model folder: --overwrite may replace it
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return linear(*args, **kwargs)

    linear = methods.linear
    monkeypatch.setattr(methods, "linear", interrupted)
    for target, overwrite in ((tmp_path / "new", False), (out, True)):
        calls.clear()
        with pytest.raises(KeyboardInterrupt):
            hf_tts.merge(folders[:2], out_dir=target, overwrite=overwrite)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "keep.txt"]
    assert {folder.name: tree_sha256(folder) for folder in folders[:2]} == before


def test_dry_run_writes_nothing(folders, tmp_path):
    path, report = hf_tts.merge(folders[:2], out_dir=tmp_path / "out", dry_run=True)
    assert path is None and not (tmp_path / "out").exists()
    assert "linear of 2 hf_tts_f5 sources" in report.plan.describe()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"weights": [1.0]}, "1 weights for 2 sources"),
        ({"weights": [1.0, -1.0]}, "sum to zero"),
        ({"layer_weights": ["text_embed=1,2,3"]}, "3 weights for 2 sources"),
        ({"layer_weights": ["no_such_module=1,2"]}, "matches no floating-point tensor"),
        ({"layer_weights": ["([=1,2"]}, "not a valid regular expression"),
        ({"method": "ties"}, "pass --base"),
        ({"method": "frankenmerge"}, "unknown merge method"),
        ({"dtype": "int8"}, "is not one of"),
    ],
)
def test_bad_arguments(folders, tmp_path, kwargs, message):
    with pytest.raises(InputError, match=message):
        hf_tts.merge(folders[:2], out_dir=tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_slerp_needs_two_sources(folders, tmp_path):
    with pytest.raises(InputError, match="exactly 2 sources, got 3"):
        hf_tts.merge(folders[:3], method="slerp", out_dir=tmp_path / "out")


def test_config_mismatch_v0_v1_refused(folders, tmp_path):
    v0 = make_f5_folder(tmp_path / "v0", 7, architecture="F5TTS_Base", text_mask_padding=False, pe_attn_head=1)
    with pytest.raises(CheckpointMismatchError, match=r"configs of source 1 .* and source 2 .*architecture"):
        hf_tts.merge([folders[0], v0], out_dir=tmp_path / "out")
    # Same weight layout, so the explicit override merges them.
    path, _ = hf_tts.merge([folders[0], v0], out_dir=tmp_path / "out", allow_config_mismatch=True)
    assert (path / "model.safetensors").exists()


def test_vocab_mismatch_refused(folders, tmp_path):
    other = make_f5_folder(tmp_path / "other", 1, vocab=["z", "b", "c", " ", "d", "e"])
    with pytest.raises(CheckpointMismatchError, match="vocabularies of source 1 .* differ"):
        hf_tts.merge([folders[0], other], out_dir=tmp_path / "out", allow_config_mismatch=True)


def test_key_and_shape_mismatch_named(folders, tmp_path):
    extra = make_f5_folder(tmp_path / "extra", 1)
    rewrite_weights(extra, lambda state: state.update({"backbone.extra.weight": torch.zeros(2)}))
    with pytest.raises(
        CheckpointMismatchError, match=r"source 2 .* has 1 keys source 1 .* lacks: backbone\.extra\.weight"
    ):
        hf_tts.merge([folders[0], extra], out_dir=tmp_path / "out")
    shape = make_f5_folder(tmp_path / "shape", 1)
    key = sorted(weights(shape))[0]
    rewrite_weights(shape, lambda state: state.update({key: torch.zeros(3, 3)}))
    with pytest.raises(CheckpointMismatchError, match=rf"tensor '{key}': source 1 .* has shape"):
        hf_tts.merge([folders[0], shape], out_dir=tmp_path / "out")
    dtype = make_f5_folder(tmp_path / "dtype", 1)
    rewrite_weights(dtype, lambda state: state.update({key: state[key].half()}))
    with pytest.raises(CheckpointMismatchError, match="torch.float16"):
        hf_tts.merge([folders[0], dtype], out_dir=tmp_path / "out")


def test_integer_buffers_copied_when_equal_refused_when_not(folders, tmp_path):
    sources = []
    for index, step in enumerate((5, 5, 6)):
        folder = make_f5_folder(tmp_path / f"s{index}", index)
        rewrite_weights(
            folder,
            lambda state, step=step: state.update(
                {"backbone.step": torch.tensor(step), "backbone.initted": torch.tensor(True)}
            ),
        )
        sources.append(folder)
    path, report = hf_tts.merge(sources[:2], out_dir=tmp_path / "ok")
    output = weights(path)
    assert output["backbone.step"].dtype == torch.int64 and output["backbone.step"].item() == 5
    assert output["backbone.initted"].dtype == torch.bool and output["backbone.initted"].item() is True
    with pytest.raises(
        CheckpointMismatchError,
        match=r"integer/bool buffer 'backbone\.step' differs between source 1 .* and source 3 .* \(5 vs 6\)",
    ):
        hf_tts.merge([sources[0], sources[1], sources[2]], out_dir=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_nan_refused_and_nothing_written(folders, tmp_path):
    broken = make_f5_folder(tmp_path / "broken", 1)
    key = sorted(k for k, v in weights(broken).items() if v.numel() > 1)[-1]
    rewrite_weights(broken, lambda state: state[key].view(-1).__setitem__(0, float("nan")))
    with pytest.raises(InputError, match=rf"source 2 .*: tensor '{key}' contains NaN or Inf"):
        hf_tts.merge([folders[0], broken], out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["broken"]


def test_plan_reads_headers_and_reports_copies(folders):
    plan = build_plan(MergeRecipe(models=[str(f) for f in folders[:2]], weights=[1, 1]))
    assert plan.layout == "safetensors" and len(plan.shards) == 1
    assert all(task.merged for task in plan.tasks)
    assert plan.recipe.normalize is True  # linear's default made explicit


def test_missing_source_is_clear(tmp_path, folders):
    with pytest.raises(InputError, match="does not exist"):
        hf_tts.merge([folders[0], tmp_path / "nope" / "x"], out_dir=tmp_path / "out")


def test_config_from_takes_config_and_processing_files(folders, tmp_path):
    donor = make_f5_folder(tmp_path / "donor", 9, cfg_strength=3.5)  # a sampling default, not a structural field
    path, _ = hf_tts.merge(folders[:2], out_dir=tmp_path / "out", config_from=donor)
    assert AutoModel.from_pretrained(path).config.cfg_strength == 3.5


def test_speech_folders_keep_processor_and_vocoder(tmp_path):
    """Converted F5 folders carrying a Vocos vocoder and processor_config.json: the vocoder tensors are copied byte
    for byte (never averaged), the backbone is averaged, the processor files come along so the pipeline loads the
    merge; a differing vocoder or processor setting is refused naming both sources, and nothing is written."""
    from speech_fixtures import f5_dir
    from transformers import pipeline

    first = tmp_path / "first"
    shutil.copytree(f5_dir(), first)
    second = tmp_path / "second"
    shutil.copytree(first, second)
    rewrite_weights(second, lambda state: [v.add_(0.5) for k, v in state.items() if k.startswith("backbone.")])
    path, report = hf_tts.merge([first, second], out_dir=tmp_path / "out")
    output, a, b = weights(path), weights(first), weights(second)
    vocoder_keys = [key for key in a if key.startswith("vocoder.")]
    assert vocoder_keys and all(torch.equal(output[key], a[key]) for key in vocoder_keys)
    assert {task.key for task in report.plan.tasks if not task.merged} == set(vocoder_keys)
    _assert_close(output, {k: (a[k].double().numpy() + b[k].double().numpy()) / 2 for k in a if k not in vocoder_keys})
    for name in ("processor_config.json", "tokenizer_config.json", "vocab.txt", "generation_config.json"):
        assert (path / name).read_bytes() == (first / name).read_bytes(), name
    assert type(pipeline("zero-shot-text-to-speech", model=str(path)).processor).__name__ == "F5Processor"

    rewrite_weights(second, lambda state: state[vocoder_keys[0]].add_(1e-3))
    with pytest.raises(CheckpointMismatchError, match=r"vocoders of source 1 .*first.* and source 2 .*second.* differ"):
        hf_tts.merge([first, second], out_dir=tmp_path / "bad")
    rewrite_weights(second, lambda state: state.update({k: a[k] for k in vocoder_keys}))
    processor = json.loads((second / "processor_config.json").read_text())
    processor["feature_extractor"]["target_rms"] = 0.2
    (second / "processor_config.json").write_text(json.dumps(processor))
    with pytest.raises(
        CheckpointMismatchError, match=r"processor_config.json of source 1 .* and source 2 .*target_rms: 0.1 vs 0.2"
    ):
        hf_tts.merge([first, second], out_dir=tmp_path / "bad")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first", "out", "second"]
    # --config-from decides which processor settings the merge carries.
    chosen, _ = hf_tts.merge([first, second], out_dir=tmp_path / "chosen", config_from=second)
    assert json.loads((chosen / "processor_config.json").read_text())["feature_extractor"]["target_rms"] == 0.2


def test_hf_tts_merge_is_callable_and_importable():
    import hf_tts.merge.plan as plan_module

    assert callable(hf_tts.merge) and plan_module.build_plan is build_plan
    assert "merge" in hf_tts.__all__


@pytest.mark.parametrize(
    "kwargs",
    [
        {"method": "linear", "weights": [1.0, 2.0, 5.0]},
        {"method": "task_arithmetic", "weights": [0.5, 1.5, 1.0], "scale": 0.8},
        {"method": "ties", "weights": [1.0, 0.5, 2.0], "density": 1.0},
        {"method": "ties", "weights": [1.0, 0.5, 2.0], "density": 0.6},
    ],
)
def test_merging_in_slices_gives_the_same_bytes(folders, tmp_path, monkeypatch, kwargs):
    """Tensors are merged in slices of CHUNK_ELEMENTS (the fixtures' tensors are smaller than the real slice size):
    slices of 100 elements, tails included, must give byte-identical weights and the same distance plot data."""
    import hf_tts.merge.stream as stream

    base = {"base": folders[3]} if kwargs["method"] != "linear" else {}
    whole, whole_report = hf_tts.merge(folders[:3], out_dir=tmp_path / "whole", **base, **kwargs)
    monkeypatch.setattr(stream, "CHUNK_ELEMENTS", 100)
    sliced, sliced_report = hf_tts.merge(folders[:3], out_dir=tmp_path / "sliced", **base, **kwargs)
    assert (whole / "model.safetensors").read_bytes() == (sliced / "model.safetensors").read_bytes()
    assert max(task.info.numel for task in sliced_report.plan.tasks) > 100
    for block, row in whole_report.distances.items():
        np.testing.assert_allclose(sliced_report.distances[block], row, rtol=1e-5, atol=1e-6)


def test_second_merge_takes_input_hashes_from_the_cache(folders, tmp_path, monkeypatch):
    """The card's sha256 of a local input is computed once and remembered (keyed by path, inode, size, mtime and
    ctime): a doctored cache entry shows up in the next merge's card, proof that the file was not hashed again."""
    import hf_tts.file_utils as file_utils

    monkeypatch.setenv("HF_TTS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(file_utils, "_RACY_WINDOW_NS", 0)  # the fixture folders were just written
    first, report = hf_tts.merge(folders[:2], out_dir=tmp_path / "first")
    real = hashlib.sha256((folders[0] / "model.safetensors").read_bytes()).hexdigest()
    assert report.input_sha256[str(folders[0])]["model.safetensors"] == real
    entries = {json.loads(entry.read_text())["sha256"]: entry for entry in (tmp_path / "cache" / "sha256").iterdir()}
    assert real in entries
    record = json.loads(entries[real].read_text())
    entries[real].write_text(json.dumps({**record, "sha256": "f" * 64}))
    second, _ = hf_tts.merge(folders[:2], out_dir=tmp_path / "second")
    assert "f" * 64 in (second / "README.md").read_text()
    assert real in (first / "README.md").read_text()


@pytest.mark.parametrize("method", ["linear", "ties"])
def test_worker_count_changes_nothing(folders, tmp_path, monkeypatch, method):
    """Slices merged by 1 or 3 threads give the same bytes and exactly the same distance statistics (they are summed
    in output order whatever thread computed them)."""
    import hf_tts.merge as merge_module
    import hf_tts.merge.stream as stream

    monkeypatch.setattr(stream, "CHUNK_ELEMENTS", 50)
    kwargs = {"weights": [1.0, 0.5, 2.0], "method": method}
    if method == "ties":
        kwargs["base"] = folders[3]
    results = {}
    for workers in (1, 3):
        monkeypatch.setattr(merge_module, "MERGE_WORKERS", workers)
        results[workers] = hf_tts.merge(folders[:3], out_dir=tmp_path / f"workers{workers}", **kwargs)
    assert (
        results[1].path.joinpath("model.safetensors").read_bytes()
        == results[3].path.joinpath("model.safetensors").read_bytes()
    )
    assert results[1].report.distances == results[3].report.distances


@pytest.mark.parametrize("weight", [1.0, 0.0])
def test_nan_in_a_later_slice_refused_even_with_zero_weight(folders, tmp_path, monkeypatch, weight):
    import hf_tts.merge.stream as stream

    monkeypatch.setattr(stream, "CHUNK_ELEMENTS", 64)
    broken = make_f5_folder(tmp_path / "broken", 1)
    key = max(weights(broken).items(), key=lambda item: item[1].numel())[0]
    rewrite_weights(broken, lambda state: state[key].view(-1).__setitem__(-1, float("inf")))
    # A zero weight cannot hide it: the check reads every source's slice, not only the merged values.
    with pytest.raises(InputError, match=rf"source 2 .*: tensor '{key}' contains NaN or Inf"):
        hf_tts.merge([folders[0], broken], out_dir=tmp_path / "out", layer_weights=[f"^{re.escape(key)}$=1,{weight}"])
    assert not (tmp_path / "out").exists()


def _distances64(sources: list[Path], merged: Path) -> dict[str, list[float]]:
    """Per block, 1 - cos(source, merge) over the block's merged float tensors, accumulated in fp64 from the files."""
    from hf_tts.merge.stream import block_name

    output = weights(merged)
    inputs = [weights(source) for source in sources]
    sums: dict[str, list[list[float]]] = {}
    for key, value in output.items():
        if not value.is_floating_point() or all(torch.equal(state[key], value) for state in inputs):
            continue  # copied unchanged (buffers): no statistics
        block = sums.setdefault(block_name(key), [[0.0, 0.0] for _ in inputs] + [[0.0]])
        merged64 = value.double().reshape(-1)
        for row, state in zip(block, inputs):
            source64 = state[key].double().reshape(-1)
            row[0] += float(source64 @ merged64)
            row[1] += float(source64 @ source64)
        block[-1][0] += float(merged64 @ merged64)
    return {
        block: [1.0 - dot / math.sqrt(norm * rows[-1][0]) for dot, norm in rows[:-1]] for block, rows in sums.items()
    }


@pytest.mark.parametrize("chunk", [None, 100])
def test_model_stock_distances_match_the_files(folders, tmp_path, monkeypatch, chunk):
    """A whole-tensor method's distance statistics (taken slice by slice from views of the whole tensors) equal the
    source/merge cosines computed from the files in fp64, whole or in slices of 100 elements."""
    import hf_tts.merge.stream as stream

    if chunk:
        monkeypatch.setattr(stream, "CHUNK_ELEMENTS", chunk)
    path, report = hf_tts.merge(folders[:3], method="model_stock", base=folders[3], out_dir=tmp_path / "out")
    expected = _distances64(folders[:3], path)
    assert set(report.distances) == set(expected)
    for block, row in expected.items():
        np.testing.assert_allclose(report.distances[block], row, rtol=1e-5, atol=1e-7)


def test_model_stock_names_a_source_with_nan(folders, tmp_path):
    broken = make_f5_folder(tmp_path / "broken", 1)
    key = max(weights(broken).items(), key=lambda item: item[1].numel())[0]
    rewrite_weights(broken, lambda state: state[key].view(-1).__setitem__(-1, float("nan")))
    with pytest.raises(InputError, match=rf"source 2 .*: tensor '{key}' contains NaN or Inf"):
        hf_tts.merge([folders[0], broken], method="model_stock", base=folders[3], out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_merge_command_pauses_the_cyclic_gc_and_restores_it(tmp_path, monkeypatch, folders):
    import gc

    import hf_tts.merge as merge_module
    from hf_tts.cli import main

    seen = []

    def recording_merge(*args, **kwargs):
        seen.append(gc.isenabled())
        raise InputError("stop here")

    monkeypatch.setattr(merge_module, "merge", recording_merge)
    assert gc.isenabled()
    assert main(["merge", str(folders[0]), str(folders[1]), "--out", str(tmp_path / "out")]) == 2
    assert seen == [False] and gc.isenabled()


def test_merge_command_sets_glibc_malloc_for_streaming(tmp_path, monkeypatch, folders):
    """The merge program has glibc map buffers above a slice buffer on their own (returned to the system when freed)
    and keep up to 32 MiB of freed heap; a C library without mallopt (not glibc) is left as it is."""
    import hf_tts.merge as merge_module
    import hf_tts.merge.allocator as allocator
    from hf_tts.cli import main

    calls = []

    class RecordingLibc:
        def mallopt(self, parameter: int, value: int) -> int:
            calls.append((parameter, value))
            return 1

    def stopping_merge(*args, **kwargs):
        raise InputError("stop here")

    monkeypatch.setattr(merge_module, "merge", stopping_merge)
    monkeypatch.setattr(allocator, "libc_function", lambda name, *types: getattr(RecordingLibc(), name, None))
    argv = ["merge", str(folders[0]), str(folders[1]), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert calls == [(-3, (4 << 20) + (64 << 10)), (-1, 32 << 20)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    monkeypatch.setattr(allocator, "libc_function", lambda name, *types: None)
    assert main(argv) == 2 and len(calls) == 2
    monkeypatch.undo()
    if sys.platform == "linux":  # the real C library has the function the merge calls
        assert callable(allocator.libc_function("mallopt"))
