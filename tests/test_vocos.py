"""Vocos: parity with upstream `vocos_tiny` (features, decode, round trip), conversion CLI, save/load buffers,
the "same"-padding ISTFT."""

from __future__ import annotations

import re
import shutil

import pytest
import torch
from conftest import upstream_fixture
from safetensors.torch import load_file
from transformers import AutoModel

from hf_tts.cli import main
from hf_tts.convert.vocos import load_upstream_vocos, vocos_config_from_yaml
from hf_tts.errors import InputError
from hf_tts.models.vocos.configuration_vocos import VocosConfig
from hf_tts.models.vocos.modeling_vocos import InverseSTFT, VocosModel


@pytest.fixture(scope="module")
def cases():
    return load_file(upstream_fixture("vocos_tiny") / "cases.safetensors")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("vocos") / "converted"
    assert main(["convert", "vocos", str(upstream_fixture("vocos_tiny")), "--out", str(out)]) == 0
    return AutoModel.from_pretrained(out, dtype=torch.float32)


def test_converted_folder_matches_upstream_outputs(converted, cases):
    assert isinstance(converted, VocosModel)
    with torch.no_grad():
        # log-mel features (Vocos' feature_extractor, clamp 1e-7)
        torch.testing.assert_close(converted.feature_extractor(cases["wave"]), cases["features"], atol=1e-5, rtol=0)
        # decode(mel) -> audio, and the copy synthesis decode(feature_extractor(wave))
        torch.testing.assert_close(converted.decode(cases["mel_in"]), cases["audio_from_mel"], atol=1e-5, rtol=0)
        torch.testing.assert_close(converted(cases["wave"]), cases["audio_roundtrip"], atol=1e-5, rtol=0)


def test_recomputed_buffers_survive_save_and_load(converted):
    fresh = VocosModel(converted.config)
    for name, buffer in fresh.named_buffers():
        torch.testing.assert_close(dict(converted.named_buffers())[name], buffer, atol=0, rtol=0)


def test_same_padding_istft_inverts_a_same_padded_stft():
    n_fft, hop = 64, 16
    signal = torch.randn(2, 640, dtype=torch.float64)
    pad = (n_fft - hop) // 2
    window = torch.hann_window(n_fft, dtype=torch.float64)
    padded = torch.nn.functional.pad(signal[:, None], (pad, pad), mode="reflect")[:, 0]
    spec = torch.stft(padded, n_fft, hop, window=window, center=False, return_complex=True)
    istft = InverseSTFT(n_fft, hop, "same").double()
    rebuilt = istft(spec)
    assert rebuilt.shape == (2, spec.shape[-1] * hop)
    # the window is an fp32 buffer, so the reconstruction is exact to fp32 precision
    torch.testing.assert_close(rebuilt, signal[:, : rebuilt.shape[1]], atol=1e-6, rtol=0)


def test_same_padding_features_equal_an_uncentred_stft_of_the_padded_wave():
    config = VocosConfig(dim=8, intermediate_dim=16, num_layers=1, feature_padding="same", istft_padding="same")
    model = VocosModel(config)
    wave = torch.randn(1, 4800)
    padded = torch.nn.functional.pad(wave[:, None], (384, 384), mode="reflect")[:, 0]
    mel = model.feature_extractor.mel
    spec = torch.stft(padded, 1024, 256, window=mel.window, center=False, return_complex=True).abs()
    expected = (spec.transpose(1, 2) @ mel.mel_filters).transpose(1, 2).clamp(min=1e-7).log()
    torch.testing.assert_close(model.feature_extractor(wave), expected, atol=1e-5, rtol=1e-5)
    assert model.decode(expected).shape == (1, expected.shape[-1] * 256)


def test_encodec_variant_and_incomplete_folders_are_refused(tmp_path, capsys):
    source = tmp_path / "src"
    shutil.copytree(upstream_fixture("vocos_tiny"), source)
    text = (source / "config.yaml").read_text()
    (source / "config.yaml").write_text(text.replace("MelSpectrogramFeatures", "EncodecFeatures"))
    with pytest.raises(InputError, match="only the mel Vocos"):
        load_upstream_vocos(source)
    (source / "config.yaml").write_text(text)
    (source / "pytorch_model.bin").unlink()
    out = tmp_path / "out"
    assert main(["convert", "vocos", str(source), "--out", str(out)]) == 2
    assert "pytorch_model.bin is missing" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("num_layers: 2", "num_layers: 3", "does not fit.*missing \\['backbone.convnext.2"),
        ("dim: 64", "dim: 32", "does not fit.*other shape .*backbone.convnext.0.dwconv.bias \\(64,\\) vs \\(32,\\)"),
    ],
)
def test_weights_that_do_not_fit_the_config_are_refused(tmp_path, capsys, old, new, message):
    source = tmp_path / "src"
    shutil.copytree(upstream_fixture("vocos_tiny"), source)
    (source / "config.yaml").write_text((source / "config.yaml").read_text().replace(old, new))
    out = tmp_path / "out"
    assert main(["convert", "vocos", str(source), "--out", str(out)]) == 2
    assert re.search(message, capsys.readouterr().err.strip())
    assert not out.exists()


# charactr/vocos-mel-24khz's config.yaml (the vocoder of every released F5-TTS / E2-TTS model)
RELEASED_CONFIG = """
feature_extractor:
  class_path: vocos.feature_extractors.MelSpectrogramFeatures
  init_args: {sample_rate: 24000, n_fft: 1024, hop_length: 256, n_mels: 100, padding: center}
backbone:
  class_path: vocos.models.VocosBackbone
  init_args: {input_channels: 100, dim: 512, intermediate_dim: 1536, num_layers: 8}
head:
  class_path: vocos.heads.ISTFTHead
  init_args: {dim: 512, n_fft: 1024, hop_length: 256, padding: center}
"""


def test_released_config_schema_and_unsupported_variants(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(RELEASED_CONFIG)
    config = vocos_config_from_yaml(path)
    assert (config.dim, config.intermediate_dim, config.num_layers, config.n_mels) == (512, 1536, 8, 100)
    assert (config.n_fft, config.hop_length, config.feature_padding) == (1024, 256, "center")
    assert config.istft_padding == "center"
    assert config.layer_scale == 1 / 8  # upstream's default layer_scale_init_value
    variants = [
        ("vocos.heads.ISTFTHead", "vocos.heads.IMDCTSymExpHead", "head.class_path .* only the mel Vocos"),
        ("num_layers: 8}", "num_layers: 8, adanorm_num_embeddings: 4}", "adanorm_num_embeddings is set"),
        ("padding: center}\nbackbone", "padding: center, f_min: 0}\nbackbone", "does not implement: \\['f_min'\\]"),
        ("{dim: 512, n_fft", "{dim: 256, n_fft", "head.dim \\(256\\) must equal backbone.dim \\(512\\)"),
    ]
    for old, new, message in variants:
        assert old in RELEASED_CONFIG
        path.write_text(RELEASED_CONFIG.replace(old, new))
        with pytest.raises(InputError, match=message):
            vocos_config_from_yaml(path)
    # upstream's training config (configs/vocos.yaml) nests the modules under model.init_args
    training = "model:\n  class_path: vocos.experiment.VocosExp\n  init_args:\n" + "".join(
        f"    {line}\n" for line in RELEASED_CONFIG.strip().splitlines()
    )
    path.write_text(training)
    with pytest.raises(InputError, match="training config .* charactr/vocos-mel-24khz"):
        vocos_config_from_yaml(path)
