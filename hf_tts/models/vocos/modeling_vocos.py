"""Vocos vocoder: log-mel (B, n_mels, T) -> ConvNeXt backbone -> ISTFT head -> waveform (B, samples).

Module and parameter names follow upstream `vocos.Vocos` (`backbone.embed`, `backbone.convnext.{i}.dwconv`, ...,
`head.out`), so a converted `pytorch_model.bin` loads key for key; the mel filterbank and the windows are
recomputed buffers, never stored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from hf_tts.audio import LogMelSpectrogram
from hf_tts.modeling_utils import HfTtsPreTrainedModel
from hf_tts.models.vocos.configuration_vocos import VocosConfig

# Vocos' own feature extractor clips the mel at 1e-7 before the log (F5-TTS' MelSpec uses 1e-5).
VOCOS_LOG_CLIP = 1e-7
# Upper bound on the predicted STFT magnitude (upstream's safeguard against overflow).
MAX_MAGNITUDE = 100.0


class VocosFeatureExtractor(nn.Module):
    """Upstream `MelSpectrogramFeatures`: natural-log mel of a waveform (B, samples) -> (B, n_mels, frames).

    "center" padding is the shared `LogMelSpectrogram`. "same" padding reflect-pads (n_fft - hop) / 2 samples and
    takes an uncentred STFT; that equals frames 2.. of the centred STFT of the padded signal (a centred frame k
    starts n_fft / 2 samples earlier), so the mel code exists once.
    """

    def __init__(self, config: VocosConfig):
        super().__init__()
        self.padding = config.feature_padding
        self.mel = LogMelSpectrogram(
            n_fft=config.n_fft,
            hop_length=config.hop_length,
            win_length=config.n_fft,
            n_mels=config.n_mels,
            sampling_rate=config.sampling_rate,
            clamp_min=VOCOS_LOG_CLIP,
        )

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if self.padding == "center":
            return self.mel(wave)
        n_fft, hop = self.mel.n_fft, self.mel.hop_length
        pad = (n_fft - hop) // 2
        padded = F.pad(wave.float().reshape(-1, 1, wave.shape[-1]), (pad, pad), mode="reflect").squeeze(1)
        frames = (padded.shape[-1] - n_fft) // hop + 1
        first = n_fft // (2 * hop)
        return self.mel(padded)[..., first : first + frames]


class VocosConvNeXtBlock(nn.Module):
    """Upstream `ConvNeXtBlock` (1-D): depthwise conv k7, LayerNorm, Linear-GELU-Linear, layer scale, residual."""

    def __init__(self, config: VocosConfig):
        super().__init__()
        self.dwconv = nn.Conv1d(config.dim, config.dim, kernel_size=7, padding=3, groups=config.dim)
        self.norm = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)
        self.pwconv1 = nn.Linear(config.dim, config.intermediate_dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(config.intermediate_dim, config.dim)
        self.gamma = nn.Parameter(torch.empty(config.dim))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        residual = hidden
        hidden = self.norm(self.dwconv(hidden).transpose(1, 2))
        hidden = self.gamma * self.pwconv2(self.act(self.pwconv1(hidden)))
        return residual + hidden.transpose(1, 2)


class VocosBackbone(nn.Module):
    """Upstream `VocosBackbone` without AdaLayerNorm: (B, n_mels, T) -> (B, T, dim)."""

    def __init__(self, config: VocosConfig):
        super().__init__()
        self.embed = nn.Conv1d(config.n_mels, config.dim, kernel_size=7, padding=3)
        self.norm = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)
        self.convnext = nn.ModuleList(VocosConvNeXtBlock(config) for _ in range(config.num_layers))
        self.final_layer_norm = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        hidden = self.norm(self.embed(mel).transpose(1, 2)).transpose(1, 2)
        for block in self.convnext:
            hidden = block(hidden)
        return self.final_layer_norm(hidden.transpose(1, 2))


class InverseSTFT(nn.Module):
    """Inverse STFT with upstream Vocos' two paddings.

    "center" is `torch.istft(center=True)`: (T - 1) * hop samples. "same" trims (win - hop) / 2 samples from each
    end of the overlap-added signal and divides by the squared-window envelope, which `torch.istft` cannot do
    (its NOLA check fails at the untrimmed edges): T * hop samples.
    """

    def __init__(self, n_fft: int, hop_length: int, padding: str):
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.padding = padding
        self.register_buffer("window", torch.empty(n_fft), persistent=False)
        self.reset_buffers()

    @torch.no_grad()
    def reset_buffers(self) -> None:
        if self.window.device.type != "meta":
            self.window.copy_(torch.hann_window(self.n_fft, periodic=True, dtype=torch.float32))

    def _overlap_add(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, n_fft, T) windowed frames -> (B, (T - 1) * hop + n_fft) summed at hop spacing."""
        length = (frames.shape[-1] - 1) * self.hop_length + self.n_fft
        return F.fold(
            frames, output_size=(1, length), kernel_size=(1, self.n_fft), stride=(1, self.hop_length)
        ).flatten(1)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        window = self.window.float()
        if self.padding == "center":
            return torch.istft(spec, self.n_fft, self.hop_length, self.n_fft, window, center=True)
        num_frames = spec.shape[-1]
        pad = (self.n_fft - self.hop_length) // 2
        frames = torch.fft.irfft(spec, self.n_fft, dim=1, norm="backward") * window[None, :, None]
        signal = self._overlap_add(frames)[:, pad:-pad]
        envelope = self._overlap_add(window.square()[None, :, None].expand(1, -1, num_frames))[0, pad:-pad]
        return signal / envelope


class VocosHead(nn.Module):
    """Upstream `ISTFTHead`: Linear to (n_fft/2 + 1) log-magnitudes and phases, then the inverse STFT."""

    def __init__(self, config: VocosConfig):
        super().__init__()
        self.out = nn.Linear(config.dim, config.n_fft + 2)
        self.istft = InverseSTFT(config.n_fft, config.hop_length, config.istft_padding)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # The spectrum and the ISTFT run in fp32 whatever the model dtype (upstream keeps the vocoder in fp32).
        log_magnitude, phase = self.out(hidden).float().transpose(1, 2).chunk(2, dim=1)
        magnitude = log_magnitude.exp().clip(max=MAX_MAGNITUDE)
        return self.istft(torch.polar(magnitude, phase))


class VocosPreTrainedModel(HfTtsPreTrainedModel):
    config_class = VocosConfig
    base_model_prefix = "vocos"
    main_input_name = "audio"
    input_modalities = ("audio",)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Upstream VocosBackbone init: truncated normal (std 0.02) weights, zero biases; layer scale 1 / num_layers.
        if isinstance(module, (nn.Conv1d, nn.Linear)):
            init.trunc_normal_(module.weight, std=self.config.initializer_range)
            init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, VocosConvNeXtBlock):
            init.constant_(module.gamma, self.config.layer_scale)
        # Non-persistent buffers are uninitialised after from_pretrained: always recompute them.
        elif isinstance(module, (LogMelSpectrogram, InverseSTFT)):
            module.reset_buffers()


class VocosModel(VocosPreTrainedModel):
    """Vocos mel vocoder. `decode(mel)` -> waveform; `feature_extractor(wave)` -> its log-mel; `forward(audio)` is
    the copy synthesis `decode(feature_extractor(audio))`, as upstream's `Vocos.forward`."""

    def __init__(self, config: VocosConfig):
        super().__init__(config)
        self.feature_extractor = VocosFeatureExtractor(config)
        self.backbone = VocosBackbone(config)
        self.head = VocosHead(config)
        self.post_init()

    @property
    def sampling_rate(self) -> int:
        return self.config.sampling_rate

    def decode(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel (B, n_mels, T) -> fp32 waveform (B, samples); samples = (T - 1) * hop ("center") or T * hop."""
        if mel.ndim != 3 or mel.shape[1] != self.config.n_mels:
            raise ValueError(f"expected a mel of shape (batch, {self.config.n_mels}, frames), got {tuple(mel.shape)}")
        return self.head(self.backbone(mel.to(self.dtype)))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.decode(self.feature_extractor(audio))


__all__ = ["VocosModel", "VocosPreTrainedModel"]
