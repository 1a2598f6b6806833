"""Input embeddings of F5-TTS / E2-TTS: sinusoidal timestep MLP, convolutional position embedding, the text
embedding (filler id 0, optional ConvNeXt-V2 blocks) and the projection of (noisy mel, cond mel, text)."""

from __future__ import annotations

import math

import torch
from torch import nn

from hf_tts.errors import InputError
from hf_tts.layers.convnext import ConvNeXtV2Block


class TimestepEmbedding(nn.Module):
    """Flow time t in [0, 1] -> (B, dim): 256 sinusoidal features of 1000*t (sin first, then cos), then an MLP."""

    def __init__(self, dim: int, freq_embed_dim: int = 256):
        super().__init__()
        self.freq_embed_dim = freq_embed_dim
        self.time_mlp = nn.Sequential(nn.Linear(freq_embed_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, time: torch.Tensor) -> torch.Tensor:
        half = self.freq_embed_dim // 2
        freqs = torch.exp(torch.arange(half, device=time.device).float() * -(math.log(10000) / (half - 1)))
        angles = 1000 * time.unsqueeze(1) * freqs.unsqueeze(0)
        features = torch.cat((angles.sin(), angles.cos()), dim=-1).to(time.dtype)
        return self.time_mlp(features)


def sinusoidal_positions(dim: int, length: int, device: torch.device | None = None) -> torch.Tensor:
    """(length, dim) table `cat(cos(p f), sin(p f))` with f_j = 1/10000^(2j/dim) (cos first), in fp32."""
    freqs = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, device=device)[: dim // 2].float() / dim))
    angles = torch.outer(torch.arange(length, device=device), freqs).float()
    return torch.cat((angles.cos(), angles.sin()), dim=-1)


class ConvPositionEmbedding(nn.Module):
    """Two grouped Conv1d(k=31) + Mish layers on (B, N, D); with `mask`, padded frames are zeroed before the first
    convolution and after each one, so they never leak into valid frames."""

    def __init__(self, dim: int, kernel_size: int = 31, groups: int = 16):
        super().__init__()
        self.conv1d = nn.Sequential(
            nn.Conv1d(dim, dim, kernel_size, groups=groups, padding=kernel_size // 2),
            nn.Mish(),
            nn.Conv1d(dim, dim, kernel_size, groups=groups, padding=kernel_size // 2),
            nn.Mish(),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x.transpose(1, 2)
        keep = mask[:, None, :] if mask is not None else None
        if keep is not None:
            x = x.masked_fill(~keep, 0.0)
        for layer in self.conv1d:
            x = layer(x)
            if keep is not None and isinstance(layer, nn.Conv1d):
                x = x.masked_fill(~keep, 0.0)
        return x.transpose(1, 2)


def _per_sample(flag: bool | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """A drop decision as a (B,) bool tensor (a Python bool applies to the whole batch)."""
    if isinstance(flag, torch.Tensor):
        return flag.to(device=device, dtype=torch.bool).expand(batch)
    return torch.full((batch,), bool(flag), device=device)


def text_ids_from_inputs(
    text: torch.Tensor | list | None,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    pad_token_id: int,
) -> torch.Tensor | list:
    """Upstream's text ids (B, T) padded with -1, from either convention: `text` as upstream builds it, or what
    the tokenizer returns (`input_ids` padded with `pad_token_id`, optionally with `attention_mask`). Positions the
    mask excludes become -1 and each row's kept ids move to its front, so a left-padded batch reads as upstream's
    right-padded one. Ids padded with -1 pass through unchanged."""
    if input_ids is not None:
        if text is not None:
            raise InputError("give the text ids once: `text` (ids padded with -1) or `input_ids`, not both")
        text = input_ids
    if text is None:
        raise InputError("the text ids are missing: pass `text` (ids padded with -1) or `input_ids` from the tokenizer")
    if not isinstance(text, torch.Tensor):
        if attention_mask is not None:
            raise InputError("attention_mask needs the ids as a (batch, tokens) tensor (return_tensors='pt')")
        return text  # a list of id lists, padded by the model
    if text.dtype.is_floating_point:
        return text  # refused with its own message by the model's checks
    text = text.masked_fill(text == pad_token_id, -1)
    if attention_mask is None:
        return text
    if tuple(attention_mask.shape) != tuple(text.shape):
        raise InputError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but the text ids have {tuple(text.shape)}"
        )
    keep = attention_mask.to(device=text.device, dtype=torch.bool)
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices
    return text.masked_fill(~keep, -1).gather(1, order)


class TextEmbedding(nn.Module):
    """Vocab ids (B, T) padded with -1 -> (B, N, text_dim) aligned to N mel frames.

    Ids are shifted by one so that -1 (padding) and positions past the text become the filler row 0. The
    tokenizer's pad id (text_num_embeds, one past the last text id) is the same padding as -1. With
    `conv_layers > 0` a sinusoidal position table is added and ConvNeXt-V2 blocks run; `mask_padding` (v1) zeroes
    filler positions before and after each block, v0 lets them carry `embed[0] + pos`. `valid` (B, N) limits each
    sample to its own length (batched inference/training), as upstream 1.1.16+. The filler mask is taken before the
    text drop, so an unconditional branch keeps the conditional branch's filler positions.
    """

    def __init__(self, text_num_embeds: int, text_dim: int, mask_padding: bool = True, conv_layers: int = 0):
        super().__init__()
        self.text_dim = text_dim
        self.mask_padding = mask_padding
        self.text_embed = nn.Embedding(text_num_embeds + 1, text_dim)
        self.text_blocks = nn.ModuleList([ConvNeXtV2Block(text_dim, text_dim * 2) for _ in range(conv_layers)])

    def forward(
        self,
        text: torch.Tensor,
        seq_len: int,
        valid: torch.Tensor | None = None,
        drop_text: bool | torch.Tensor = False,
    ) -> torch.Tensor:
        text = text.masked_fill(text == self.text_embed.num_embeddings - 1, -1)  # the tokenizer's pad id
        tokens = (text + 1)[:, :seq_len]
        tokens = nn.functional.pad(tokens, (0, seq_len - tokens.shape[1]), value=0)
        if valid is not None:
            tokens = tokens.masked_fill(~valid, 0)
        filler = tokens == 0
        if isinstance(drop_text, torch.Tensor) or drop_text:
            tokens = tokens.masked_fill(_per_sample(drop_text, tokens.shape[0], tokens.device)[:, None], 0)
        h = self.text_embed(tokens)
        if valid is not None:
            h = h.masked_fill(~valid[..., None], 0.0)
        if len(self.text_blocks) == 0:
            return h
        positions = sinusoidal_positions(self.text_dim, seq_len, device=h.device)
        if valid is not None:
            positions = positions.unsqueeze(0) * valid.unsqueeze(-1).to(positions.dtype)
        h = h + positions.to(h.dtype)  # half-precision models add the table in their dtype, as upstream's cast buffer
        if self.mask_padding:
            h = h.masked_fill(filler[..., None], 0.0)
        for block in self.text_blocks:
            h = block(h)
            if self.mask_padding:
                h = h.masked_fill(filler[..., None], 0.0)
        return h


class InputEmbedding(nn.Module):
    """proj(cat(noisy mel, cond mel, text)) + conv position embedding of it. `drop_audio_cond` (bool or (B,) bool)
    zeroes the cond mel of the dropped samples."""

    def __init__(self, mel_dim: int, text_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Linear(mel_dim * 2 + text_dim, out_dim)
        self.conv_pos_embed = ConvPositionEmbedding(out_dim)

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        text_embed: torch.Tensor,
        drop_audio_cond: bool | torch.Tensor = False,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if isinstance(drop_audio_cond, torch.Tensor):
            cond = cond.masked_fill(_per_sample(drop_audio_cond, cond.shape[0], cond.device)[:, None, None], 0.0)
        elif drop_audio_cond:
            cond = torch.zeros_like(cond)
        h = self.proj(torch.cat((x, cond, text_embed), dim=-1))
        return self.conv_pos_embed(h, mask=mask) + h


__all__ = [
    "ConvPositionEmbedding",
    "InputEmbedding",
    "TextEmbedding",
    "TimestepEmbedding",
    "sinusoidal_positions",
    "text_ids_from_inputs",
]
