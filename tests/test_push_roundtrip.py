"""Push -> load round trips through the package's local registry (the `local_hub` fixture): `model.push_to_hub`,
`hf-tts push`, `hf-tts merge --push-to-hub`, revisions, and a pipeline loaded by repo id."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import HfApi, ModelCard, hf_hub_download
from transformers import AutoModel, pipeline

from hf_tts.cli import main as hf_tts_main
from hf_tts.hub.cards import usage_snippet, write_model_card
from hf_tts.hub.push import push_folder
from hf_tts.models.f5.modeling_f5 import F5TTSModel
from hf_tts.models.vocos.configuration_vocos import VocosConfig
from hf_tts.models.vocos.modeling_vocos import VocosModel
from hf_tts.processing import F5FeatureExtractor, F5Processor
from hf_tts.tokenization_f5 import F5Tokenizer
from tests.merge_utils import tiny_f5_config

VOCAB = [" ", ".", "a", "b", "c", "d", "e", "h", "l", "o"]


def tiny_f5(seed: int = 0) -> F5TTSModel:
    torch.manual_seed(seed)
    return F5TTSModel(tiny_f5_config(text_num_embeds=len(VOCAB), tokenizer_type="char"))


def assert_same_tensors(left: torch.nn.Module, right: torch.nn.Module) -> None:
    """Every parameter and persistent buffer, bit for bit (fp32)."""
    left_state, right_state = left.state_dict(), right.state_dict()
    assert left_state.keys() == right_state.keys()
    for key, value in left_state.items():
        assert torch.equal(value, right_state[key]), key


def test_model_push_to_hub_uploads_the_generated_card_and_loads_back_identical(local_hub):
    model = tiny_f5()
    commit = model.push_to_hub("org/f5-tiny", tags=["demo"])
    loaded = AutoModel.from_pretrained("org/f5-tiny", dtype=torch.float32)
    assert type(loaded) is F5TTSModel
    assert_same_tensors(model, loaded)
    # One commit holds the weights and the package's card (not transformers' default README).
    info = HfApi().model_info("org/f5-tiny")
    assert info.sha == commit.oid
    assert {"README.md", "config.json", "model.safetensors"} <= {sibling.rfilename for sibling in info.siblings}
    card = ModelCard.load("org/f5-tiny")
    assert card.data.library_name == "hf-tts"
    assert {"hf-tts", "f5-tts", "demo"} <= set(card.data.tags)
    assert "| `depth` | `2` |" in card.text
    # The card's snippet loads the model from the repo, as written.
    snippet = usage_snippet(str(card))
    assert 'model_id = "org/f5-tiny"' in snippet
    scope: dict = {}
    exec(snippet, scope)  # noqa: S102  (the snippet the package itself generated)
    assert_same_tensors(model, scope["model"])
    assert tuple(scope["mel"].shape) == (1, 48, model.config.mel_dim)


def test_a_second_push_adds_a_revision_and_the_first_stays_loadable(local_hub):
    model = tiny_f5(seed=0)
    first = model.push_to_hub("org/f5-revisions")
    original = {key: value.clone() for key, value in model.state_dict().items()}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    second = model.push_to_hub("org/f5-revisions", commit_message="shifted")
    assert first.oid != second.oid
    latest = AutoModel.from_pretrained("org/f5-revisions", dtype=torch.float32)
    old = AutoModel.from_pretrained("org/f5-revisions", revision=first.oid, dtype=torch.float32)
    assert_same_tensors(model, latest)
    for key, value in old.state_dict().items():
        assert torch.equal(value, original[key]), key
    history = HfApi().list_repo_commits("org/f5-revisions")
    assert [commit.commit_id for commit in history[:2]] == [second.oid, first.oid]
    assert history[0].title == "shifted"


def test_hf_tts_push_command_pushes_a_folder_with_its_card(local_hub, tmp_path, capsys):
    folder = tmp_path / "voice"
    model = tiny_f5()
    model.save_pretrained(folder)
    write_model_card(folder, kind="f5", license="cc-by-nc-4.0")
    before = sorted((path.name, path.read_bytes()) for path in folder.iterdir())
    code = hf_tts_main(["push", str(folder), "team/voice", "--revision", "dev", "--commit-message", "first voice"])
    assert code == 0
    output = capsys.readouterr().out
    assert "team/voice" in output and "dev" in output
    assert sorted((path.name, path.read_bytes()) for path in folder.iterdir()) == before  # input untouched
    api = HfApi()
    dev = api.model_info("team/voice", revision="dev")
    assert {sibling.rfilename for sibling in dev.siblings} == {path.name for path in folder.iterdir()}
    assert {sibling.rfilename for sibling in api.model_info("team/voice").siblings} == set()  # main untouched
    readme = Path(hf_hub_download("team/voice", "README.md", revision="dev")).read_text()
    assert 'model_id = "team/voice"' in readme and "license: cc-by-nc-4.0" in readme
    assert "\n# team/voice\n" in readme and "./voice" not in readme
    assert_same_tensors(model, AutoModel.from_pretrained("team/voice", revision="dev", dtype=torch.float32))


def test_hf_tts_push_reports_a_refused_write_in_one_line(local_hub, tmp_path, capsys):
    folder = tmp_path / "voice"
    tiny_f5().save_pretrained(folder)
    capsys.readouterr()
    local_hub.token = "s3cret"
    assert hf_tts_main(["push", str(folder), "team/voice"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "HTTP 401" in error and "need a token" in error
    assert hf_tts_main(["push", str(folder), "team/voice", "--token", "s3cret"]) == 0
    # No README in the folder: the card is generated from config.json.
    card = ModelCard.load("team/voice")
    assert card.data.library_name == "hf-tts" and 'model_id = "team/voice"' in card.text
    assert hf_tts_main(["push", str(tmp_path / "missing"), "team/voice"]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_merge_push_to_hub_round_trip(local_hub, tmp_path):
    left, right = tmp_path / "finetune-1", tmp_path / "finetune-2"
    tiny_f5(seed=1).save_pretrained(left)
    tiny_f5(seed=2).save_pretrained(right)
    out = tmp_path / "merged"
    code = hf_tts_main(
        ["merge", str(left), str(right), "--weights", "0.6", "0.4", "--out", str(out), "--push-to-hub", "org/merged"]
    )
    assert code == 0
    loaded = AutoModel.from_pretrained("org/merged", dtype=torch.float32)
    expected = {
        key: 0.6 * a + 0.4 * b
        for (key, a), b in zip(
            AutoModel.from_pretrained(left).state_dict().items(), AutoModel.from_pretrained(right).state_dict().values()
        )
    }
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=1e-6, atol=1e-6, msg=key)
    card = ModelCard.load("org/merged")
    assert card.data.library_name == "hf-tts" and "merge" in card.data.tags
    assert 'model_id = "org/merged"' in card.text
    # The heading follows the repo id too; the local folder keeps its own.
    assert card.text.lstrip().startswith("# org/merged\n") and "./merged" not in card.text
    assert "\n# ./merged\n" in (out / "README.md").read_text()
    # Like every card: the flags and the architecture table of the merged config, and the inputs' hashes.
    assert "| `architecture` | `F5TTS_v1_Base` |" in card.text and "| `depth` | `2` |" in card.text
    assert hashlib.sha256((left / "model.safetensors").read_bytes()).hexdigest() in card.text


def speech_folder(path: Path) -> Path:
    """A tiny F5 with a random Vocos attached and a char tokenizer/processor: a folder the pipeline can speak from."""
    model = tiny_f5()
    model.attach_vocoder(
        VocosModel(VocosConfig(n_mels=model.config.mel_dim, num_layers=1, dim=16, intermediate_dim=24))
    )
    path.mkdir(parents=True)
    vocab = path / "vocab.txt"
    vocab.write_text("".join(f"{token}\n" for token in VOCAB), encoding="utf-8")
    tokenizer = F5Tokenizer(str(vocab), tokenizer_type="char")
    processor = F5Processor(F5FeatureExtractor(sampling_rate=24000, hop_length=256), tokenizer)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    write_model_card(path, kind="f5")
    return path


def test_pipeline_from_a_repo_id_matches_the_local_folder(local_hub, tmp_path):
    folder = speech_folder(tmp_path / "speaker")
    push_folder(folder, "org/speaker")
    reference = np.random.default_rng(0).standard_normal(24000).astype(np.float32) * 0.1
    options = dict(ref_audio=reference, ref_text="hello ", nfe_step=4, seed=0, sampling_rate=24000)
    remote = pipeline("zero-shot-text-to-speech", model="org/speaker", device="cpu")("abc de", **options)
    local = pipeline("zero-shot-text-to-speech", model=str(folder), device="cpu")("abc de", **options)
    assert remote["sampling_rate"] == 24000
    assert remote["audio"].dtype == np.float32 and remote["audio"].size > 0
    np.testing.assert_array_equal(remote["audio"], local["audio"])


def test_pipeline_from_a_private_repo_uses_the_callers_token(local_hub, tmp_path):
    local_hub.token = "s3cret"
    folder = speech_folder(tmp_path / "speaker")
    push_folder(folder, "org/private-speaker", private=True, token="s3cret")
    reference = np.random.default_rng(1).standard_normal(24000).astype(np.float32) * 0.1
    options = dict(ref_audio=reference, ref_text="hello ", nfe_step=2, seed=0, sampling_rate=24000)
    pipe = pipeline("zero-shot-text-to-speech", model="org/private-speaker", device="cpu", token="s3cret")
    out = pipe("abc de", **options)
    assert out["sampling_rate"] == 24000 and out["audio"].size > 0
