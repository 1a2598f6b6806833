"""The pieces of fine-tuning on their own: dataset preparation from every audio source, the collator, the
frame-bucketing sampler, the EMA schedule (upstream's ema_pytorch defaults) and vocabulary extension."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile
import torch
from datasets import Dataset
from transformers import AutoModel, AutoTokenizer

from hf_tts import F5TTSModel
from hf_tts.errors import CheckpointMismatchError, InputError
from hf_tts.training import (
    EMACallback,
    FlowMatchingDataCollator,
    FrameBucketBatchSampler,
    extend_vocabulary,
    load_metadata_folder,
    mel_spectrogram_for,
    prepare_tts_dataset,
)
from hf_tts.training.vocab import UPSTREAM_EXTENSION_SEED
from tests.training_utils import (
    SAMPLING_RATE,
    VOCAB,
    synthetic_clips,
    synthetic_dataset,
    tiny_f5_config,
    tiny_tokenizer,
    write_metadata_folder,
)

# ---------------------------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("vocab"))


def test_metadata_folder_is_read_with_paths_relative_to_it(tmp_path):
    write_metadata_folder(tmp_path, count=3)
    dataset = load_metadata_folder(tmp_path)
    assert dataset["audio"] == [str(tmp_path / "wavs" / f"clip_{index:03d}.wav") for index in range(3)]
    assert dataset["text"] == [text for _, text in synthetic_clips(3)]


@pytest.mark.parametrize(
    "metadata, message",
    [
        ("path|text\nwavs/clip_000.wav|hi\n", "header 'audio_file|text'"),
        ("audio_file|text\nwavs/missing.wav|hi\n", "missing.wav does not exist"),
        ("audio_file|text\nwavs/clip_000.wav\n", "line 2: expected 'audio_file|text'"),
    ],
)
def test_bad_metadata_is_reported_with_the_line(tmp_path, metadata, message):
    write_metadata_folder(tmp_path, count=1)
    (tmp_path / "metadata.csv").write_text(metadata)
    with pytest.raises(InputError, match=message):
        load_metadata_folder(tmp_path)


def test_every_audio_source_gives_the_same_mel(tmp_path, tokenizer):
    """Arrays, WAV bytes (Audio(decode=False)), file paths and the metadata folder (16 kHz WAVs, resampled) lead
    to the same batch; precomputed mels equal the ones computed on the fly (max abs difference 0)."""
    config = tiny_f5_config()
    collate = FlowMatchingDataCollator(mel_spectrogram_for(config))
    clips = synthetic_clips(3)
    arrays = synthetic_dataset(3)
    paths, blobs = [], []
    for index, (wave, _) in enumerate(clips):
        path = tmp_path / f"{index}.wav"
        soundfile.write(path, wave, SAMPLING_RATE, subtype="FLOAT")
        paths.append(str(path))
        buffer = io.BytesIO()
        soundfile.write(buffer, wave, SAMPLING_RATE, subtype="FLOAT", format="WAV")
        blobs.append({"bytes": buffer.getvalue(), "path": None})
    texts = [text for _, text in clips]
    reference = collate(list(prepare_tts_dataset(arrays, tokenizer, config)))
    for source in (
        Dataset.from_dict({"audio": paths, "text": texts}),
        Dataset.from_dict({"audio": blobs, "text": texts}),
    ):
        batch = collate(list(prepare_tts_dataset(source, tokenizer, config)))
        for key in reference:
            assert torch.equal(batch[key], reference[key]), key
    precomputed = prepare_tts_dataset(arrays, tokenizer, config, precompute_mel=True, cache_dir=tmp_path / "cache")
    assert precomputed.column_names == ["text_ids", "num_frames", "mel"]
    batch = FlowMatchingDataCollator()(list(precomputed))
    for key in reference:
        assert torch.equal(batch[key], reference[key]), key
    # Resampled 16 kHz files: same frame counts, mel close to the 8 kHz originals' (resampling error only).
    folder = prepare_tts_dataset(write_metadata_folder(tmp_path / "folder", count=3), tokenizer, config)
    resampled = collate(list(folder))
    assert torch.equal(resampled["mel_lengths"], reference["mel_lengths"])
    assert torch.equal(resampled["text"], reference["text"])


def test_collator_pads_mel_with_zeros_and_text_with_minus_one(tokenizer):
    config = tiny_f5_config()
    rows = list(prepare_tts_dataset(synthetic_dataset(2), tokenizer, config, precompute_mel=True))
    batch = FlowMatchingDataCollator()(rows)
    short, long = sorted(range(2), key=lambda index: len(rows[index]["text_ids"]))
    lengths = batch["mel_lengths"].tolist()
    assert lengths == [int(row["num_frames"]) for row in rows]
    assert batch["mel"].shape == (2, max(lengths), config.mel_dim)
    assert torch.equal(batch["mel"][0, lengths[0] :], torch.zeros_like(batch["mel"][0, lengths[0] :]))
    text_length = len(rows[short]["text_ids"])
    assert (batch["text"][short, text_length:] == -1).all() and (batch["text"][long] >= 0).all()


def test_precomputed_mels_are_cached_by_datasets_map(tmp_path, tokenizer):
    config = tiny_f5_config()
    first = prepare_tts_dataset(synthetic_dataset(2), tokenizer, config, precompute_mel=True, cache_dir=tmp_path)
    cached = sorted(path.name for path in tmp_path.glob("hf_tts-prepared-*.arrow"))
    assert len(cached) == 2  # the prepared rows and the duration-filtered view
    second = prepare_tts_dataset(synthetic_dataset(2), tokenizer, config, precompute_mel=True, cache_dir=tmp_path)
    assert second.cache_files == first.cache_files
    assert sorted(path.name for path in tmp_path.glob("hf_tts-prepared-*.arrow")) == cached


def test_unknown_tokens_and_short_clips_are_reported(tokenizer):
    config = tiny_f5_config()
    dataset = Dataset.from_dict(
        {"audio": [{"array": np.zeros(4000), "sampling_rate": SAMPLING_RATE}], "text": ["hé 7"]}
    )
    with pytest.raises(InputError, match="2 token\\(s\\) missing from the model's vocab: 'é7'"):
        prepare_tts_dataset(dataset, tokenizer, config)
    rows = prepare_tts_dataset(dataset, tokenizer, config, allow_unknown_tokens=True)
    assert rows[0]["text_ids"].tolist() == [VOCAB.index("h"), 0, 0, 0]
    with pytest.raises(InputError, match="no clip lasts between 0.6 s"):
        prepare_tts_dataset(dataset, tokenizer, config, allow_unknown_tokens=True, min_seconds=0.6)
    with pytest.raises(InputError, match="no 'speech' column"):
        prepare_tts_dataset(dataset, tokenizer, config, audio_column="speech")


# ---------------------------------------------------------------------------------------------- sampler


def test_frame_buckets_respect_the_budget_and_cover_every_row():
    lengths = [50, 400, 120, 80, 300, 60, 700, 90, 200, 10]
    sampler = FrameBucketBatchSampler(lengths, 500, seed=3)
    batches = list(sampler)
    assert sorted(index for batch in batches for index in batch) == [i for i, n in enumerate(lengths) if n <= 500]
    assert all(sum(lengths[index] for index in batch) <= 500 for batch in batches)
    # Packed in length order (each batch holds neighbours in length), then the batch order is shuffled.
    packed = [index for batch in sampler.batches for index in batch]
    assert [lengths[index] for index in packed] == sorted(n for n in lengths if n <= 500)
    assert batches != sampler.batches and sorted(batches) == sorted(sampler.batches)
    assert list(sampler) == batches  # same epoch, same order
    sampler.set_epoch(1)
    assert sorted(map(sorted, sampler)) == sorted(map(sorted, batches))
    assert len(FrameBucketBatchSampler(lengths, 500, max_samples=2)) >= len(lengths[:-1]) // 2
    assert all(len(batch) <= 2 for batch in FrameBucketBatchSampler(lengths, 500, max_samples=2))
    with pytest.raises(InputError, match="raise --batch-frames to at least 800"):
        FrameBucketBatchSampler([700, 800], 500)


# ---------------------------------------------------------------------------------------------- EMA


def test_ema_follows_upstream_schedule():
    """ema_pytorch semantics: copy on steps 0..update_after_step (every update_every), then
    ema -= (1 - decay) * (ema - w) with decay = 1 - (1 + n) ** -2/3, n = steps since update_after_step."""
    model = torch.nn.Linear(1, 1, bias=False)
    ema = EMACallback(update_after_step=2, update_every=1)
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    expected, average = [], None
    for step, value in enumerate(values):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update(model)
        if step <= 2:
            average = value
        else:
            decay = 1 - (1 + (step - 2)) ** (-2 / 3)
            average = average - (1 - decay) * (average - value)
        expected.append(average)
        assert ema.shadow["weight"].item() == pytest.approx(average, rel=1e-6)
    assert ema.num_updates == len(values) and expected[-1] < values[-1]
    assert EMACallback(update_after_step=0).current_decay() == 0.0
    long_run = EMACallback(max_decay=0.9999, update_after_step=100)
    long_run.num_updates = 10**9
    assert long_run.current_decay() == 0.9999


def test_ema_every_n_steps_and_file_round_trip(tmp_path):
    model = torch.nn.Linear(2, 2)
    ema = EMACallback(update_after_step=0, update_every=3)
    for value in range(7):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update(model)
    # Steps 0, 3 and 6 touch the average; 0 copies.
    decay3, decay6 = 1 - 4 ** (-2 / 3), 1 - 7 ** (-2 / 3)
    after3 = decay3 * 0 + (1 - decay3) * 3
    assert ema.shadow["weight"][0, 0].item() == pytest.approx(decay6 * after3 + (1 - decay6) * 6, rel=1e-6)
    ema.save(tmp_path)
    restored = EMACallback(update_after_step=0, update_every=3)
    restored.load(tmp_path, model)
    assert restored.num_updates == 7 and torch.equal(restored.shadow["weight"], ema.shadow["weight"])
    with pytest.raises(CheckpointMismatchError, match="does not match the model"):
        restored.load(tmp_path, torch.nn.Linear(2, 2, bias=False))
    with pytest.raises(InputError, match="missing"):
        restored.load(tmp_path / "nowhere", model)


# ---------------------------------------------------------------------------------------------- vocab


def test_vocab_extension_appends_rows_and_keeps_old_ids(tmp_path, tokenizer):
    torch.manual_seed(0)
    model = F5TTSModel(tiny_f5_config())
    table = model.backbone.text_embed.text_embed.weight.detach().clone()
    old_ids = tokenizer.encode_batch("a chirp.").ids
    extended, added = extend_vocabulary(model, tokenizer, ["é", "a", "ß", "é"])
    assert added == ["é", "ß"]
    assert extended.vocab_size == len(VOCAB) + 2 and model.config.text_num_embeds == len(VOCAB) + 2
    new_table = model.backbone.text_embed.text_embed.weight
    assert new_table.shape == (len(VOCAB) + 3, table.shape[1]) and new_table.requires_grad
    assert torch.equal(new_table[: len(table)], table)
    # Upstream: torch.manual_seed(666); torch.randn(new_rows, dim).
    expected = torch.randn(2, table.shape[1], generator=torch.Generator().manual_seed(UPSTREAM_EXTENSION_SEED))
    assert torch.equal(new_table[len(table) :].detach(), expected)
    assert torch.equal(extended.encode_batch("a chirp.").ids, old_ids)
    assert extended.encode_batch("éß").ids.tolist() == [[len(VOCAB), len(VOCAB) + 1]]
    # The bigger table and vocab survive save / load.
    model.save_pretrained(tmp_path)
    extended.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path, dtype=torch.float32)
    assert torch.equal(reloaded.backbone.text_embed.text_embed.weight, new_table.detach())
    assert AutoTokenizer.from_pretrained(tmp_path).encode_batch("éß").ids.tolist() == [[30, 31]]
    assert extend_vocabulary(model, extended, ["a"]) == (extended, [])
