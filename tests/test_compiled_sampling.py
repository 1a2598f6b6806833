"""`sample(compile=True)`: the torch.compile'd backbone gives the eager result (fp32, within 1e-4), follows weights
changed after compiling, and stays out of the state dict."""

from __future__ import annotations

import shutil

import pytest
import torch

from hf_tts.models.f5.configuration_f5 import F5TTSConfig
from hf_tts.models.f5.modeling_f5 import F5TTSModel

pytestmark = pytest.mark.skipif(
    shutil.which("gcc") is None and shutil.which("cc") is None,
    reason="torch.compile's inductor backend needs a C compiler (gcc or cc) on PATH to build CPU kernels",
)
SAMPLE_TOLERANCE = 1e-4  # compiled vs eager sampled mel, max abs difference


def test_compiled_sample_equals_eager_and_follows_weight_changes():
    torch.manual_seed(0)
    config = F5TTSConfig(
        dim=32, depth=1, heads=2, dim_head=16, ff_mult=2, text_num_embeds=20, mel_dim=8, conv_layers=1, text_dim=16
    )
    model = F5TTSModel(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():  # adaLN / output layers start at zero: draw everything
            parameter.normal_(0, 0.2)
    keys = set(model.state_dict())
    prompt = torch.randn(2, 6, 8)
    text = torch.tensor([[1, 2, 3, 4, 5, -1, -1], [6, 7, 8, 9, 10, 11, 12]])
    settings = dict(steps=3, cfg_strength=2.0, latents=torch.randn(2, 17, 8), lens=torch.tensor([6, 4]))
    duration = torch.tensor([17, 12])

    eager = model.sample(prompt, text, duration, **settings)
    compiled = model.sample(prompt, text, duration, compile=True, **settings)
    assert (compiled - eager).abs().max().item() <= SAMPLE_TOLERANCE
    assert set(model.state_dict()) == keys

    # freezing may bake weights into the compiled code: a changed weight must give a fresh compilation
    first = model.compiled_backbone()
    assert model.compiled_backbone() is first  # cached while the weights are unchanged
    with torch.no_grad():
        model.backbone.proj_out.weight.mul_(-1.5)
    assert model.compiled_backbone() is not first
    eager = model.sample(prompt, text, duration, **settings)
    compiled = model.sample(prompt, text, duration, compile=True, **settings)
    assert (compiled - eager).abs().max().item() <= SAMPLE_TOLERANCE
