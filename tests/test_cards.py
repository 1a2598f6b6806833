"""Generated model cards: front matter, architecture table, flags, provenance, a usage snippet that runs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from huggingface_hub import ModelCard

from hf_tts.errors import InputError
from hf_tts.file_utils import sha256_file
from hf_tts.hub.cards import (
    available_kinds,
    kind_for_config,
    render_model_card,
    retarget_model_card,
    usage_snippet,
    write_model_card,
)
from hf_tts.models.f5.modeling_f5 import F5TTSModel
from hf_tts.models.vocos.configuration_vocos import VocosConfig
from hf_tts.models.vocos.modeling_vocos import VocosModel
from hf_tts.processing import F5FeatureExtractor, F5Processor
from hf_tts.tokenization_f5 import F5Tokenizer
from tests.merge_utils import VOCAB, tiny_f5_config


def test_every_writer_kind_has_a_template():
    assert {"f5", "e2", "vocos", "cfg_motion", "finetune", "merge"} <= set(available_kinds())


def test_front_matter_goes_through_model_card_data():
    card = render_model_card(
        kind="f5",
        config=tiny_f5_config(),
        base_model="SWivid/F5-TTS",
        base_model_relation="finetune",
        license="cc-by-nc-4.0",
        language=["en", "zh"],
        tags=["my-voice"],
    )
    reparsed = ModelCard(str(card)).data.to_dict()
    assert reparsed["library_name"] == "hf-tts"
    assert reparsed["pipeline_tag"] == "text-to-speech"
    assert reparsed["tags"] == ["hf-tts", "f5-tts", "text-to-speech", "flow-matching", "my-voice"]
    assert reparsed["base_model"] == "SWivid/F5-TTS"
    assert reparsed["base_model_relation"] == "finetune"
    assert reparsed["license"] == "cc-by-nc-4.0"
    assert reparsed["language"] == ["en", "zh"]


def test_optional_metadata_is_left_out_when_unknown():
    data = ModelCard(str(render_model_card(kind="vocos", config=VocosConfig(num_layers=1)))).data.to_dict()
    assert data["pipeline_tag"] == "audio-to-audio"
    assert "vocoder" in data["tags"]
    for key in ("base_model", "base_model_relation", "license", "language"):
        assert key not in data


def test_body_has_architecture_flags_and_provenance(tmp_path):
    checkpoint = tmp_path / "model_1250000.safetensors"
    checkpoint.write_bytes(b"not really weights, but hashed all the same")
    config = tiny_f5_config()
    text = str(render_model_card(kind="f5", config=config, sources=[checkpoint, {"name": "org/parent", "step": 7}]))
    from hf_tts import __version__

    assert "| `depth` | `2` |" in text
    assert "| `dim` | `32` |" in text
    assert f"| `text_num_embeds` | `{config.text_num_embeds}` |" in text
    assert "| `architecture` | `F5TTS_v1_Base` |" in text
    assert "| `init_adaln_zero` | `True` |" in text
    # F5 has no quantizer: the freeze flag is not shown; transformers' bookkeeping keys never are.
    assert "freeze_quantizer" not in text
    assert "transformers_version" not in text and "`dtype`" not in text
    assert f"sha256 `{sha256_file(checkpoint)}`" in text
    assert "Source `org/parent`, step `7`" in text
    assert f"`hf_tts` {__version__}" in text


def test_freeze_flag_is_shown_for_models_with_a_quantizer():
    from hf_tts.models.cfg_motion.configuration_cfg_motion import CFGMotionConfig

    config = CFGMotionConfig(freeze_quantizer=True)
    text = str(render_model_card(kind=kind_for_config(config), config=config))
    assert "| `freeze_quantizer` | `True` |" in text
    assert ModelCard(text).data.pipeline_tag == "other"


def test_bad_arguments_are_refused_with_a_clear_message(tmp_path):
    with pytest.raises(InputError, match="unknown model card kind 'bark'.*f5"):
        render_model_card(kind="bark")
    with pytest.raises(InputError, match="needs base_model"):
        render_model_card(kind="f5", base_model_relation="merge")
    with pytest.raises(InputError, match="base_model_relation must be one of"):
        render_model_card(kind="f5", base_model="a/b", base_model_relation="cousin")
    with pytest.raises(InputError, match="is not a file"):
        render_model_card(kind="f5", sources=[tmp_path / "missing.pt"])
    with pytest.raises(InputError, match="not a folder"):
        write_model_card(tmp_path / "missing", kind="f5")
    with pytest.raises(InputError, match="no model card template for model type 'bert'"):
        from transformers import BertConfig

        kind_for_config(BertConfig())


def test_write_model_card_reads_the_folder_config_and_replaces_readme(tmp_path):
    folder = tmp_path / "tiny-vocos"
    VocosModel(VocosConfig(num_layers=1, dim=16, intermediate_dim=24)).save_pretrained(folder)
    (folder / "README.md").write_text("old card")
    path = write_model_card(folder, kind="vocos")
    text = path.read_text()
    assert path == folder / "README.md"
    assert "| `num_layers` | `1` |" in text and "| `intermediate_dim` | `24` |" in text
    assert 'model_id = "./tiny-vocos"' in text
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]


def test_retarget_points_the_snippet_at_the_repo():
    text = str(render_model_card(kind="f5", model_id="./local"))
    moved = retarget_model_card(text, "org/voice")
    assert 'model_id = "org/voice"' in usage_snippet(moved)
    assert "./local" not in usage_snippet(moved)
    assert retarget_model_card("# hand-written", "org/voice") == "# hand-written"
    # The heading names the repo, not the local folder; a hand-written heading is kept.
    assert "\n# org/voice\n" in moved and "./local" not in moved
    renamed = text.replace("\n# ./local\n", "\n# My voice\n")
    assert "\n# My voice\n" in retarget_model_card(renamed, "org/voice")


@pytest.mark.parametrize("kind", ["f5", "f5+vocoder", "vocos"])
def test_usage_snippet_of_a_written_card_runs(tmp_path, kind):
    """The snippet is run as written, in a fresh interpreter, from the folder's parent directory."""
    torch.manual_seed(0)
    if kind.startswith("f5"):
        model = F5TTSModel(tiny_f5_config(mel_dim=100))  # Vocos' mel
    else:
        model = VocosModel(VocosConfig(num_layers=1, dim=16, intermediate_dim=24))
    folder = tmp_path / f"tiny-{kind.replace('+', '-')}"
    if kind == "f5+vocoder":  # a folder that speaks: vocoder, tokenizer and processor saved with the model
        model.attach_vocoder(VocosModel(VocosConfig(num_layers=1, dim=16, intermediate_dim=24)))
        char_vocab = tmp_path / "vocab.txt"
        char_vocab.write_text("\n".join(VOCAB) + "\n")
        tokenizer = F5Tokenizer(str(char_vocab), tokenizer_type="char")
        F5Processor(F5FeatureExtractor(sampling_rate=24000, hop_length=256), tokenizer).save_pretrained(folder)
    model.save_pretrained(folder)
    snippet = usage_snippet(write_model_card(folder, kind=kind.split("+")[0]).read_text())
    result = subprocess.run(
        [sys.executable, "-c", snippet],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    parameters = sum(parameter.numel() for parameter in model.parameters())
    assert f"{type(model).__name__} {parameters} parameters" in result.stdout
    expected = {"f5": "mel (1, 48, 100)", "f5+vocoder": "speech (", "vocos": "waveform (1, "}
    assert expected[kind] in result.stdout


def test_converted_f5_folder_has_a_card_with_source_hashes(tmp_path):
    from conftest import upstream_fixture

    from hf_tts.convert.f5 import convert_f5_checkpoint

    source = upstream_fixture("f5_v1_tiny")
    vocab = upstream_fixture("f5_vocab.txt")
    out = convert_f5_checkpoint(source / "model_ema.safetensors", source / "arch.json", vocab, tmp_path / "f5-conv")
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "hf-tts" and "f5-tts" in card.data.tags
    assert f"sha256 `{sha256_file(source / 'model_ema.safetensors')}`" in card.text
    assert f"sha256 `{sha256_file(vocab)}`" in card.text
    assert 'model_id = "./f5-conv"' in card.text


def test_a_carried_vocoder_shows_as_dotted_rows():
    config = tiny_f5_config(mel_dim=100, vocoder_config=VocosConfig(dim=16, num_layers=1).to_dict())
    text = str(render_model_card(kind="f5", config=config))
    assert "| `vocoder_config.dim` | `16` |" in text and "| `vocoder_config.num_layers` | `1` |" in text
    assert "| `vocoder_config` |" not in text  # no dict dumped into one cell
    assert "vocoder_config.freeze_quantizer" not in text and "vocoder_config.transformers_version" not in text
    assert "the folder alone gives speech" in text
