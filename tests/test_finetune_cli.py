"""`hf-tts finetune` end to end on a metadata.csv folder of 16 kHz WAVs: output folder with EMA + online weights,
tokenizer, training log and a card recording data, steps and final loss; checkpoints and resume; vocab extension;
one-line errors with exit code 2 for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi
from transformers import AutoModel

from hf_tts.cli import main
from hf_tts.file_utils import sha256_file
from hf_tts.training.finetune import TRAINING_LOG_NAME
from tests.training_utils import VOCAB, make_model_folder, write_metadata_folder

FAST = ["--lr", "2e-3", "--batch-frames", "300", "--ema-update-after-step", "1", "--ema-update-every", "1"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("finetune")
    (folder / "existing").mkdir()
    (folder / "existing" / "config.json").write_text("{}")  # an earlier output: --out needs --overwrite
    return make_model_folder(folder / "base"), write_metadata_folder(folder / "data", count=4), folder


def finetune(*arguments) -> int:
    return main(["finetune", *map(str, arguments)])


def test_finetune_writes_model_card_log_and_checkpoints(inputs, capsys):
    base, data, folder = inputs
    out = folder / "out"
    code = finetune(
        "--model", base, "--data", data, "--out", out, "--max-steps", 4, "--save-steps", 2, *FAST, "--logging-steps", 1
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "trained 4 steps on 4 rows" in printed and str(out) in printed
    log = json.loads((out / TRAINING_LOG_NAME).read_text())
    losses = [entry["loss"] for entry in log if "loss" in entry]
    assert len(losses) == 4
    card = (out / "README.md").read_text()
    assert f"| `data` | `{data}` |" in card and "| `steps` | `4` |" in card
    assert f"| `final_loss` | `{round(losses[-1], 6)}` |" in card
    # Provenance: the starting weights, hashed.
    assert f"sha256 `{sha256_file(Path(base) / 'model.safetensors')}`" in card
    assert (out / "vocab.txt").read_text().splitlines() == VOCAB
    ema = AutoModel.from_pretrained(out, dtype=torch.float32)
    online = AutoModel.from_pretrained(out, dtype=torch.float32, variant="online")
    differs = [
        name
        for name, value in ema.state_dict().items()
        if value.is_floating_point() and not torch.equal(value, online.state_dict()[name])
    ]
    assert differs
    checkpoints = folder / "out.checkpoints"
    assert sorted(path.name for path in checkpoints.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert (checkpoints / "checkpoint-2" / "ema.safetensors").is_file()

    # Resume: the step-4 checkpoint continues to step 5.
    resumed = folder / "resumed"
    code = finetune(
        "--model",
        base,
        "--data",
        data,
        "--out",
        resumed,
        "--max-steps",
        5,
        "--save-steps",
        2,
        *FAST,
        "--checkpoint-dir",
        checkpoints,
        "--resume",
    )
    assert code == 0
    assert "trained 5 steps" in capsys.readouterr().out
    assert "| `steps` | `5` |" in (resumed / "README.md").read_text()


def test_unknown_tokens_need_extend_vocab(inputs, capsys, tmp_path):
    base, data, _ = inputs
    metadata = data / "metadata.csv"
    accented = tmp_path / "data"
    accented.mkdir()
    (accented / "wavs").symlink_to(data / "wavs")
    (accented / "metadata.csv").write_text(metadata.read_text().replace("tone", "tön"))
    code = finetune("--model", base, "--data", accented, "--out", tmp_path / "refused", "--max-steps", 1)
    assert code == 2
    error = capsys.readouterr().err
    assert "missing from the model's vocab: 'ö'" in error and "--extend-vocab" in error
    assert not (tmp_path / "refused").exists()

    out = tmp_path / "extended"
    assert finetune("--model", base, "--data", accented, "--out", out, "--max-steps", 1, *FAST, "--extend-vocab") == 0
    assert "vocab extended by 1 tokens: 'ö'" in capsys.readouterr().out
    assert (out / "vocab.txt").read_text().splitlines() == [*VOCAB, "ö"]
    assert json.loads((out / "config.json").read_text())["text_num_embeds"] == len(VOCAB) + 1


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--data", "{folder}/nowhere"], "--data folder {folder}/nowhere does not exist"),
        (["--data", "./nowhere/data"], "--data folder ./nowhere/data does not exist"),
        (["--data", "{data}/metadata.csv"], "is not a folder"),
        (["--data", "{data}", "--data-revision", "v1"], "--data-revision applies to a Hub dataset repo"),
        (["--data", "{base}"], "has neither a metadata.csv"),
        (["--data", "{folder}"], "lies inside the input"),
        (["--data", "{data}", "--max-steps", "0"], "argument --max-steps: 0 is outside [1, 10000000]"),
        (["--data", "{data}", "--out", "{base}"], "is the input"),
        (["--data", "{data}", "--out", "{folder}/existing"], "already exists"),
        (["--data", "{data}", "--model", "{folder}/no-model"], "cannot load the model"),
    ],
)
def test_bad_input_exits_2_with_one_line(inputs, capsys, arguments, message):
    base, data, folder = inputs
    values = {"folder": folder, "data": data, "base": base}
    defaults = {"--model": str(base), "--out": str(folder / "never")}
    filled = [argument.format(**values) for argument in arguments]
    for flag, value in defaults.items():
        if flag not in filled:
            filled += [flag, value]
    try:
        code = main(["finetune", *filled])
    except SystemExit as exit:  # argparse refuses bad option values itself
        code = exit.code
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert message.format(**values) in error and len(error.splitlines()) == 1
    assert not (folder / "never").exists()


def test_finetune_from_a_hub_repo_and_push_the_result(inputs, local_hub, capsys, tmp_path):
    """--model as a repo id on the local registry, --push-to-hub to another: the pushed repo loads the EMA weights
    by default, the online ones as a variant, and carries the fine-tune card with base_model set."""
    from hf_tts.hub.push import push_folder

    base, data, _ = inputs
    push_folder(base, "org/base")
    out = tmp_path / "out"
    code = finetune(
        "--model", "org/base", "--data", data, "--out", out, "--max-steps", 2, *FAST, "--push-to-hub", "org/tuned"
    )
    assert code == 0 and "pushed to org/tuned" in capsys.readouterr().out
    local = AutoModel.from_pretrained(out, dtype=torch.float32)
    pushed = AutoModel.from_pretrained("org/tuned", dtype=torch.float32)
    pushed_online = AutoModel.from_pretrained("org/tuned", dtype=torch.float32, variant="online")
    online = AutoModel.from_pretrained(out, dtype=torch.float32, variant="online")
    for name, value in local.state_dict().items():
        assert torch.equal(pushed.state_dict()[name], value), name
        assert torch.equal(pushed_online.state_dict()[name], online.state_dict()[name]), name
    from huggingface_hub import ModelCard

    card = ModelCard.load("org/tuned")
    assert card.data.base_model == "org/base" and "| `steps` | `2` |" in card.text
    # Provenance: the repo at the commit it was loaded from, and the hash of its weights.
    assert f"Source `org/base@{HfApi().model_info('org/base').sha}`" in card.text
    assert f"sha256 `{sha256_file(Path(base) / 'model.safetensors')}`" in card.text


def test_finetune_on_a_hub_dataset_repo(inputs, local_hub, capsys, tmp_path):
    """--data org/data: a dataset repo with the metadata.csv layout, pushed with the real client, is downloaded
    (HF_ENDPOINT, --data-revision) and trained on like the local folder; the card names the repo at its commit.
    A missing repo or revision is one line; a metadata.csv that points outside its repo is refused."""
    base, data, _ = inputs
    api = HfApi()
    api.create_repo("org/data", repo_type="dataset")
    first = api.upload_folder(folder_path=data, repo_id="org/data", repo_type="dataset").oid
    api.create_tag("org/data", tag="v1", repo_type="dataset")
    # A later commit that drops two clips: --data-revision v1 still trains on four.
    metadata = (data / "metadata.csv").read_text().splitlines()
    api.upload_file(
        path_or_fileobj="\n".join(metadata[:3]).encode() + b"\n",
        path_in_repo="metadata.csv",
        repo_id="org/data",
        repo_type="dataset",
    )
    out = tmp_path / "tuned"
    assert finetune("--model", base, "--data", "org/data", "--out", out, "--max-steps", 2, *FAST) == 0
    assert "trained 2 steps on 2 rows" in capsys.readouterr().out
    latest = api.dataset_info("org/data").sha
    assert f"| `data` | `org/data@{latest}` |" in (out / "README.md").read_text()
    pinned = tmp_path / "pinned"
    code = finetune(
        "--model", base, "--data", "org/data", "--data-revision", "v1", "--out", pinned, "--max-steps", 1, *FAST
    )
    assert code == 0 and "trained 1 steps on 4 rows" in capsys.readouterr().out
    assert f"| `data` | `org/data@{first}` |" in (pinned / "README.md").read_text()

    refused = tmp_path / "refused"
    for arguments, message in (
        (["--data", "org/nothing"], "--data org/nothing: no such dataset repo on HF_ENDPOINT="),
        (["--data", "org/data", "--data-revision", "v9"], "has no revision 'v9'"),
    ):
        assert finetune("--model", base, *arguments, "--out", refused, "--max-steps", 1) == 2
        error = capsys.readouterr().err.strip()
        assert message in error and len(error.splitlines()) == 1
    api.create_repo("org/escape", repo_type="dataset")
    api.upload_file(
        path_or_fileobj=b"audio_file|text\n../../../../etc/passwd|hello\n",
        path_in_repo="metadata.csv",
        repo_id="org/escape",
        repo_type="dataset",
    )
    assert finetune("--model", base, "--data", "org/escape", "--out", refused, "--max-steps", 1) == 2
    assert "leaves the dataset" in capsys.readouterr().err
    assert not refused.exists()
