"""Pipelines of the package.

- `"zero-shot-text-to-speech"` ([`ZeroShotTextToSpeechPipeline`]): voice cloning with F5-TTS / E2-TTS and the
  vocoder the model folder carries, with bare keyword arguments:
  `pipe(text_or_texts, ref_audio=..., ref_text=..., nfe_step=32, cfg_strength=2.0, sway_sampling_coef=-1.0,
  speed=1.0, seed=None, fix_duration=None, remove_silence=False, dtype="auto")` -> `{"audio": float32 numpy
  (samples,), "sampling_rate": 24000}` (a list for a list). `stream=True` returns a generator of such dicts, one
  piece of audio as soon as it is ready (`model.synthesize_stream`). A list of requests (texts, or dicts with their
  own `text` / `ref_audio` / `ref_text` / options) with `batch_size=N` shares solves between the chunks of N
  requests at a time (`model.synthesize_batch`).
- transformers' built-in `"text-to-speech"` pipeline works through `model.generate` (see `hf_tts.synthesis`),
  with the same options in `forward_params`.
"""

from __future__ import annotations

from typing import Any

from transformers import Pipeline

from hf_tts.errors import InputError
from hf_tts.file_utils import check_finite
from hf_tts.limits import MAX_MOTION_FRAMES, MAX_SAMPLING_STEPS, MAX_SEED, check_number
from hf_tts.processing import F5Processor, SynthesisInputs, check_speech_options
from hf_tts.synthesis import (
    SpeechSynthesisMixin,
    check_generated,
    check_sampling_options,
    join_chunks,
    resolve_sampling_dtype,
    sampling_model,
    stream_chunks,
)

ZERO_SHOT_TTS_TASK = "zero-shot-text-to-speech"


def _require_inputs(inputs: Any, what: str) -> None:
    """Refuse an empty list / tuple (transformers would return an empty list without a word) and None."""
    if inputs is None or (isinstance(inputs, (list, tuple)) and len(inputs) == 0):
        raise InputError(f"{what}: got {inputs!r}; give at least one input")


class ZeroShotTextToSpeechPipeline(Pipeline):
    """Text + a reference voice (audio and its transcript) -> speech in that voice. Long texts are split into
    chunks that are sampled in one batch and cross-faded (see `hf_tts.synthesis`)."""

    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False
    # Optional: when the folder / repo has a processor_config.json, transformers loads it with the caller's hub
    # arguments (token, revision); otherwise the model builds one from its tokenizer.
    _load_processor = None
    _pipeline_calls_generate = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.model, SpeechSynthesisMixin):
            raise InputError(f"{ZERO_SHOT_TTS_TASK} needs an F5-TTS or E2-TTS model, got {type(self.model).__name__}")
        self.model.require_vocoder()

    def __call__(self, text: Any, **kwargs: Any) -> Any:
        _require_inputs(text, "the text to synthesize (a string or a list of strings)")
        if kwargs.pop("stream", False):
            return self._stream(text, **kwargs)
        batch_size = kwargs.pop("batch_size", None)
        if isinstance(text, (list, tuple)) and (batch_size is not None or any(isinstance(t, dict) for t in text)):
            return self._batch(list(text), batch_size or 1, **kwargs)
        return super().__call__(text, **kwargs)

    def _stream(self, text: Any, **kwargs: Any) -> Any:
        """`pipe(text, stream=True, ...)`: a generator of {"audio", "sampling_rate"} pieces (see
        `synthesize_stream`); every input is checked before the generator is returned."""
        if not isinstance(text, str):
            raise InputError(f"stream=True takes one text (a string), got {type(text).__name__}")
        if kwargs.pop("remove_silence", False):
            raise InputError("remove_silence needs the whole audio, so it cannot be used with stream=True")
        pieces = self.model.synthesize_stream(text, processor=self._processor(), **kwargs)
        return ({"audio": piece.audio, "sampling_rate": piece.sampling_rate} for piece in pieces)

    def _batch(self, requests: list, batch_size: int, dtype: Any = "auto", **shared: Any) -> list[dict[str, Any]]:
        """A list of requests (texts, or dicts overriding the shared keyword arguments) through
        `model.synthesize_batch`, `batch_size` requests sharing solves."""
        merged = []
        for request in requests:
            request = {"text": request} if isinstance(request, str) else request
            if not isinstance(request, dict):
                raise InputError(f"each request must be a text or a dict, got {type(request).__name__}")
            merged.append({**shared, **request})
        outputs = self.model.synthesize_batch(merged, batch_size=batch_size, processor=self._processor(), dtype=dtype)
        return [{"audio": output.audio, "sampling_rate": output.sampling_rate} for output in outputs]

    def _sanitize_parameters(
        self,
        ref_audio: Any = None,
        ref_text: str | None = None,
        sampling_rate: int | None = None,
        speed: float | None = None,
        nfe_step: int | None = None,
        cfg_strength: float | None = None,
        sway_sampling_coef: float | None = -1.0,
        seed: int | None = None,
        fix_duration: float | None = None,
        remove_silence: bool = False,
        dtype: Any = "auto",
    ) -> tuple[dict, dict, dict]:
        # Checked once per call, before any input is read (None: the defaults).
        check_sampling_options(nfe_step, cfg_strength, sway_sampling_coef, seed)
        resolve_sampling_dtype(dtype, self.model.device)
        check_speech_options(1.0 if speed is None else speed, fix_duration)
        preprocess = {"ref_audio": ref_audio, "ref_text": ref_text, "sampling_rate": sampling_rate}
        preprocess["fix_duration"] = fix_duration
        if speed is not None:
            preprocess["speed"] = speed
        forward = {"steps": nfe_step, "cfg_strength": cfg_strength, "sway_sampling_coef": sway_sampling_coef}
        forward["seed"] = seed
        forward["dtype"] = dtype
        return preprocess, forward, {"remove_silence": remove_silence}

    def _processor(self) -> F5Processor:
        return self.model.get_processor(self.processor if isinstance(self.processor, F5Processor) else None)

    def preprocess(
        self,
        text: str,
        ref_audio: Any = None,
        ref_text: str | None = None,
        sampling_rate: int | None = None,
        speed: float = 1.0,
        fix_duration: float | None = None,
    ) -> dict[str, SynthesisInputs]:
        if not isinstance(text, str):
            raise InputError(f"the text to synthesize must be a string, got {type(text).__name__}")
        inputs = self._processor()(
            text, ref_audio, ref_text, sampling_rate=sampling_rate, speed=speed, fix_duration=fix_duration
        )
        return {"inputs": inputs}

    def _forward(
        self, model_inputs: dict[str, SynthesisInputs], dtype: Any = "auto", **sample_options
    ) -> dict[str, Any]:
        # the same solves as `model.synthesize` (first chunk alone, then the rest), so the audio is the same
        inputs = model_inputs["inputs"]
        sampler = sampling_model(self.model, resolve_sampling_dtype(dtype, self.model.device))
        waves = [wave for _, _, wave in stream_chunks(sampler, inputs, self.model.vocoder, **sample_options)]
        return {"waves": waves}

    def postprocess(self, model_outputs: dict[str, Any], remove_silence: bool = False) -> dict[str, Any]:
        rate = self.model.vocoder.config.sampling_rate
        return {"audio": join_chunks(model_outputs["waves"], rate, remove_silence), "sampling_rate": rate}


__all__ = ["ZERO_SHOT_TTS_TASK", "ZeroShotTextToSpeechPipeline"]


AUDIO_TO_MOTION_TASK = "audio-to-motion"


class AudioToMotionPipeline(Pipeline):
    """Voice -> motion with a [`CFGMotionModel`]: `pipe(audio, guidance_scale=None, num_inference_steps=None,
    num_frames=None, sampling_rate=None, seed=None, keyframes=None)` -> `{"motion": float32 (frames, nfeats),
    "fps": int}`. `audio` is a file path, a 1-D array (at `sampling_rate`, default the model's) or a
    `{"array", "sampling_rate"}` dict, turned into conditioning by the model's audio encoder after per-utterance
    normalisation (zero mean, unit variance, as wav2vec2 / HuBERT expect); the motion lasts as long as the audio.
    Precomputed features work without an audio encoder: pass `{"cond_features": (length, C) array}` and
    `num_frames`. Inputs reach the model in its own dtype, so a model loaded or cast to bf16/fp16 runs as is."""

    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False
    _load_processor = False
    _pipeline_calls_generate = False

    def __call__(self, inputs: Any, **kwargs: Any) -> Any:
        _require_inputs(inputs, "the audio or {'cond_features': ...} to animate")
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(
        self,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        num_frames: int | None = None,
        sampling_rate: int | None = None,
        seed: int | None = None,
        keyframes: Any = None,
    ) -> tuple[dict, dict, dict]:
        if num_frames is not None:
            check_number("num_frames", num_frames, 1, MAX_MOTION_FRAMES, integer=True)
        if num_inference_steps is not None:
            check_number("num_inference_steps", num_inference_steps, 1, MAX_SAMPLING_STEPS, integer=True)
        if seed is not None:
            check_number("seed", seed, 0, MAX_SEED, integer=True)
        forward = {
            "guidance_scale": guidance_scale,
            "num_inference_steps": num_inference_steps,
            "num_frames": num_frames,
            "seed": seed,
            "keyframes": keyframes,
        }
        return {"sampling_rate": sampling_rate}, forward, {}

    def preprocess(self, inputs: Any, sampling_rate: int | None = None) -> dict[str, Any]:
        import numpy as np
        import torch

        from hf_tts.audio import load_audio

        config, dtype = self.model.config, self.model.dtype
        if isinstance(inputs, dict) and "cond_features" in inputs:
            return {"cond_features": self._features(inputs["cond_features"]).to(self.device, dtype)}
        if self.model.audio_encoder is None:
            raise InputError(
                "this model has no audio encoder (config.audio_encoder), so it cannot take audio; pass "
                "{'cond_features': array} with num_frames instead"
            )
        wave = load_audio(inputs, config.audio_sampling_rate, input_sampling_rate=sampling_rate)
        wave = (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)
        return {"audio": torch.from_numpy(wave)[None].to(self.device, dtype)}

    @staticmethod
    def _features(values: Any) -> Any:
        """(1, length, C) float32 conditioning from a (length, C) or (B, length, C) array, refusing what would make
        NaN or no motion: a non-numeric, empty or non-finite array."""
        import numpy as np
        import torch

        try:
            array = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values)
        except (TypeError, ValueError) as error:
            raise InputError(f"cond_features must be a numeric array, got {type(values).__name__} ({error})") from None
        if array.dtype.kind not in "fiu":
            raise InputError(f"cond_features must be a numeric (float or int) array, got dtype {array.dtype}")
        if array.ndim not in (2, 3) or array.shape[-2] == 0 or array.shape[-1] == 0 or array.size == 0:
            raise InputError(
                f"cond_features must be a non-empty (length, C) or (B, length, C) array, got {array.shape}"
            )
        check_finite(array, "cond_features")
        features = torch.from_numpy(array.astype(np.float32))
        return features[None] if features.dim() == 2 else features

    def _forward(
        self,
        model_inputs: dict[str, Any],
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        num_frames: int | None = None,
        seed: int | None = None,
        keyframes: Any = None,
    ) -> dict[str, Any]:
        import torch

        if "cond_features" in model_inputs and num_frames is None:
            raise InputError("num_frames is required with precomputed cond_features (audio sets it from its length)")
        generator = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        if keyframes is not None:
            keyframes = torch.as_tensor(keyframes, dtype=self.model.dtype, device=self.device)
            keyframes = keyframes[None] if keyframes.dim() == 2 else keyframes
        motion = self.model.generate(
            **model_inputs,
            num_frames=num_frames,
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
            keyframes=keyframes,
            generator=generator,
        )
        return {"motion": motion}

    def postprocess(self, model_outputs: dict[str, Any]) -> dict[str, Any]:
        motion = model_outputs["motion"][0].detach().to("cpu").float().numpy()
        check_generated(motion, "the generated motion", "the options (guidance_scale, num_inference_steps)")
        return {"motion": motion, "fps": int(self.model.config.fps)}


__all__ += ["AUDIO_TO_MOTION_TASK", "AudioToMotionPipeline"]
