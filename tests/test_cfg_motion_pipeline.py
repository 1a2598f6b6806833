"""The `audio-to-motion` pipeline and `hf-tts animate`: raw audio through a (tiny, random) transformers speech
encoder, or precomputed features, to motion; files written by the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch
from transformers import pipeline

from hf_tts import CFGMotionConfig, CFGMotionModel
from hf_tts.cli import main
from hf_tts.errors import InputError

TINY_WAV2VEC2 = {
    "model_type": "wav2vec2",
    "hidden_size": 8,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 16,
    "conv_dim": [8, 8],
    "conv_kernel": [10, 4],
    "conv_stride": [5, 4],
    "num_feat_extract_layers": 2,
    "num_conv_pos_embeddings": 8,
    "num_conv_pos_embedding_groups": 2,
}
TINY = dict(nfeats=6, latent_dim=16, heads=2, layers=1, ff_size=32, cond_feature_dim=8, cond_encoder_layers=1)


@pytest.fixture(scope="module")
def audio_model_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = CFGMotionConfig(
        architecture="face", audio_encoder=TINY_WAV2VEC2, num_inference_steps=4, max_cond_len=1000, **TINY
    )
    folder = tmp_path_factory.mktemp("a2m") / "model"
    CFGMotionModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def features_model_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("a2m") / "features_model"
    CFGMotionModel(
        CFGMotionConfig(architecture="face", num_inference_steps=4, max_cond_len=64, **TINY)
    ).save_pretrained(folder)
    return folder


def test_pipeline_turns_audio_into_motion(audio_model_dir, tmp_path):
    pipe = pipeline("audio-to-motion", model=str(audio_model_dir), device="cpu")
    assert not any(p.requires_grad for p in pipe.model.audio_encoder.parameters()), "frozen audio encoder"
    wave = np.random.default_rng(0).standard_normal(8000).astype(np.float32)  # 0.5 s at 16 kHz
    first = pipe(wave, seed=1, guidance_scale=3.0)
    assert first["fps"] == 30
    assert first["motion"].shape == (15, 6) and first["motion"].dtype == np.float32
    np.testing.assert_array_equal(pipe(wave, seed=1, guidance_scale=3.0)["motion"], first["motion"])
    assert not np.allclose(pipe(wave, seed=2, guidance_scale=3.0)["motion"], first["motion"])
    # A file at another rate is resampled to the encoder's 16 kHz: 0.5 s still gives 15 frames.
    path = tmp_path / "voice.wav"
    soundfile.write(path, wave[::2], 8000)
    assert pipe(str(path), seed=1)["motion"].shape == (15, 6)


def test_pipeline_with_precomputed_features(features_model_dir):
    pipe = pipeline("audio-to-motion", model=str(features_model_dir), device="cpu")
    features = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
    out = pipe({"cond_features": features}, num_frames=12, seed=0)
    assert out["motion"].shape == (12, 6)
    expected = pipe.model.generate(torch.from_numpy(features)[None], 12, generator=torch.Generator().manual_seed(0))[
        0
    ].numpy()
    np.testing.assert_allclose(out["motion"], expected, atol=1e-6)
    with pytest.raises(InputError, match="no audio encoder"):
        pipe(np.zeros(1600, dtype=np.float32))
    with pytest.raises(InputError, match="num_frames is required"):
        pipe({"cond_features": features})


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_pipeline_hands_the_model_its_own_dtype(audio_model_dir, dtype):
    # Audio, features and keyframes reach the model in its dtype (float32 inputs into a bf16 model fail in its
    # first matmul); the motion comes back as float32, equal to calling the model with inputs in its dtype.
    wave = np.random.default_rng(0).standard_normal(8000).astype(np.float32)
    audio_pipe = pipeline("audio-to-motion", model=str(audio_model_dir), device="cpu")
    audio_pipe.model.to(dtype)
    motion = audio_pipe(wave, seed=1)["motion"]
    assert motion.dtype == np.float32 and motion.shape == (15, 6) and np.isfinite(motion).all()

    torch.manual_seed(0)
    body = CFGMotionModel(CFGMotionConfig(architecture="body", num_inference_steps=4, max_cond_len=64, **TINY)).eval()
    body_pipe = pipeline("audio-to-motion", model=body.to(dtype), device="cpu")
    features = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
    keyframes = np.random.default_rng(1).standard_normal((1, 6)).astype(np.float32)  # ceil(12 / stride 30) rows
    motion = body_pipe({"cond_features": features}, num_frames=12, seed=0, keyframes=keyframes)["motion"]
    expected = body.generate(
        torch.from_numpy(features)[None].to(dtype),
        12,
        keyframes=torch.from_numpy(keyframes)[None].to(dtype),
        generator=torch.Generator().manual_seed(0),
    )[0]
    assert motion.dtype == np.float32
    np.testing.assert_array_equal(motion, expected.float().numpy())


def test_animate_cli_writes_motion_and_plot(audio_model_dir, tmp_path, capsys):
    audio = tmp_path / "voice.wav"
    soundfile.write(audio, np.random.default_rng(1).standard_normal(16000).astype(np.float32) * 0.1, 16000)
    out, plot = tmp_path / "motion.npy", tmp_path / "curves.png"
    code = main(["animate", str(audio_model_dir), str(audio), "--out", str(out), "--plot", str(plot), "--seed", "0"])
    assert code == 0
    motion = np.load(out)
    assert motion.shape == (30, 6)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "30 frames x 6 features at 30 fps" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "motion.npy", "voice.wav"]
    # Existing outputs are kept unless --overwrite.
    assert main(["animate", str(audio_model_dir), str(audio), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    np.testing.assert_array_equal(np.load(out), motion)


def test_animate_cli_from_features(features_model_dir, tmp_path, capsys):
    features = tmp_path / "features.npy"
    np.save(features, np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32))
    out = tmp_path / "motion.npy"
    assert main(["animate", str(features_model_dir), "--features", str(features), "--out", str(out)]) == 2
    assert "--num-frames" in capsys.readouterr().err
    args = ["animate", str(features_model_dir), "--features", str(features), "--num-frames", "9", "--out", str(out)]
    assert main(args) == 0
    assert np.load(out).shape == (9, 6)


def test_animate_writes_exactly_the_named_file(features_model_dir, tmp_path):
    # An --out without the .npy suffix still gets the motion array (numpy would append ".npy" to a bare path),
    # as an ordinary (not 0600) file, and nothing else is left in the folder.
    features = tmp_path / "features.npy"
    np.save(features, np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32))
    out = tmp_path / "motion"
    args = ["animate", str(features_model_dir), "--features", str(features), "--num-frames", "9", "--out", str(out)]
    assert main(args) == 0
    assert np.load(out).shape == (9, 6)
    assert out.stat().st_mode & 0o044
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.npy", "motion"]


@pytest.mark.parametrize(
    "model, width, options, message",
    [
        (None, 8, ["--steps", "600"], "num_inference_steps=600 cannot be reached"),
        (None, 8, ["--steps", "0"], "argument --steps: 0 is outside [1, 1000]"),
        (None, 8, ["--guidance-scale", "-1"], "argument --guidance-scale: -1 is outside [0.0, 100.0]"),
        (None, 8, ["--num-frames", "0"], "argument --num-frames: 0 is outside [1, 18000]"),
        (None, 9, [], "must be (length, 8) for this model, got shape (40, 9)"),
        ("missing/model/folder", 8, [], "model folder missing/model/folder does not exist"),
    ],
)
def test_animate_bad_input_exits_2_with_one_line(features_model_dir, tmp_path, capsys, model, width, options, message):
    features = tmp_path / "features.npy"
    np.save(features, np.zeros((40, width), dtype=np.float32))
    out = tmp_path / "motion.npy"
    args = ["animate", model or str(features_model_dir), "--features", str(features), "--out", str(out)]
    args += options if "--num-frames" in options else ["--num-frames", "9", *options]
    try:
        code = main(args)
    except SystemExit as exit:  # argparse refuses out-of-range numbers itself
        code = exit.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.npy"]
