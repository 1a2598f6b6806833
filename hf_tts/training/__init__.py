"""Fine-tuning with `transformers.Trainer` and `datasets`: data preparation and collation, frame-bucketed batches,
an EMA callback, vocabulary extension and the Trainer subclass that ties them together."""

from hf_tts.training.data import (
    FlowMatchingDataCollator,
    find_unknown_tokens,
    load_metadata_folder,
    mel_spectrogram_for,
    prepare_tts_dataset,
)
from hf_tts.training.ema import EMACallback
from hf_tts.training.sampler import FrameBucketBatchSampler
from hf_tts.training.trainer import ONLINE_VARIANT, HfTtsTrainer, save_trained_model
from hf_tts.training.vocab import extend_vocabulary

__all__ = [
    "EMACallback",
    "FlowMatchingDataCollator",
    "FrameBucketBatchSampler",
    "HfTtsTrainer",
    "ONLINE_VARIANT",
    "extend_vocabulary",
    "find_unknown_tokens",
    "load_metadata_folder",
    "mel_spectrogram_for",
    "prepare_tts_dataset",
    "save_trained_model",
]
