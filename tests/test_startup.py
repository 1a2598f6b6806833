"""Instant commands: `hf-tts --help`, `--version` and every `COMMAND --help` import neither torch nor transformers;
`import hf_tts` is lazy; the registry server's modules never import torch. Each check runs in a fresh interpreter
and reads `sys.modules` (what was imported, not how long it took: tests never assert wall-clock times;
scripts/bench_startup.py measures those)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hf_tts.cli import COMMANDS
from hf_tts.commands.convert import CONVERT_FAMILIES

HEAVY = ("torch", "transformers")

_PROBE = """
import json, sys
from hf_tts.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
print(json.dumps([name for name in {heavy!r} if name in sys.modules]), file=sys.stderr)
"""

# Commands whose modules (not owned by the CLI) still import torch/transformers for --help. strict: the test fails
# (XPASS) as soon as one becomes light, so the mark is removed then.
NOT_YET_LIGHT: dict[str, str] = {}


def heavy_modules_after(argv: list[str]) -> list[str]:
    """Which of HEAVY a fresh `hf-tts ARGV` imported."""
    result = subprocess.run(
        [sys.executable, "-c", _PROBE.format(argv=argv, heavy=HEAVY)], capture_output=True, text=True, timeout=120
    )
    return json.loads(result.stderr.strip().splitlines()[-1])


def _help_cases() -> list:
    cases = [pytest.param(["--help"], id="--help"), pytest.param(["--version"], id="--version")]
    for command in COMMANDS:
        marks = [pytest.mark.xfail(strict=True, reason=NOT_YET_LIGHT[command])] if command in NOT_YET_LIGHT else []
        cases.append(pytest.param([command, "--help"], id=f"{command} --help", marks=marks))
    cases += [pytest.param(["convert", family, "--help"], id=f"convert {family} --help") for family in CONVERT_FAMILIES]
    cases.append(pytest.param(["hub", "serve", "--help"], id="hub serve --help"))
    return cases


@pytest.mark.parametrize("argv", _help_cases())
def test_help_and_version_import_neither_torch_nor_transformers(argv):
    assert heavy_modules_after(argv) == []


def test_presets_and_inspect_run_without_torch(tmp_path):
    assert heavy_modules_after(["presets"]) == []
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "hf_tts_vocos", "n_mels": 100}')
    assert heavy_modules_after(["inspect", str(folder)]) == []


def test_import_hf_tts_is_lazy_and_registers_with_transformers():
    probe = (
        "import sys, hf_tts\n"
        "lazy = [name for name in ('torch', 'transformers') if name in sys.modules]\n"
        "from transformers import AutoConfig\n"
        "print(lazy, type(AutoConfig.for_model('hf_tts_f5')).__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.split() == ["[]", "F5TTSConfig"]


def test_registry_server_modules_import_no_torch():
    # `hf-tts hub serve` runs the registry; its command and server modules must stay free of torch.
    probe = (
        "import sys, hf_tts.commands.hub, hf_tts.registry.server, hf_tts.registry.app\n"
        "print([name for name in ('torch', 'transformers') if name in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]"


# What each import order must leave registered, checked in a fresh interpreter after every step: each Auto class's
# part as soon as its Auto module is imported (before or after hf_tts), the pipeline tasks as soon as transformers'
# pipelines are, and nothing more (the models, processors and pipelines each cost seconds to import).
_ORDER_PROBE = """
import sys
for step in {steps!r}:
    exec(step)
    registration = sys.modules.get("hf_tts.registration")  # imported with hf_tts
    parts = sorted(registration.registered_parts()) if registration else []
    print(",".join(parts) or "-", "transformers.pipelines" in sys.modules)
from transformers import AutoConfig, AutoModel, pipeline
from transformers.pipelines import PIPELINE_REGISTRY
assert type(AutoConfig.for_model("hf_tts_f5")).__name__ == "F5TTSConfig"
assert AutoModel._model_mapping[type(AutoConfig.for_model("hf_tts_cfg_motion"))].__name__ == "CFGMotionModel"
for task in ("zero-shot-text-to-speech", "audio-to-motion"):
    print(PIPELINE_REGISTRY.check_task(task)[1]["impl"].__name__)
"""
_PIPELINE_CLASSES = ["ZeroShotTextToSpeechPipeline", "AudioToMotionPipeline"]


_ALL = "configs,feature_extractors,models,pipelines,processors,tokenizers True"


@pytest.mark.parametrize(
    ("steps", "states"),
    [
        (
            [
                "import hf_tts",
                "import transformers",
                "from transformers import AutoModel",
                "import transformers.pipelines",
            ],
            ["- False", "- False", "configs,models,tokenizers False", _ALL],
        ),
        (
            [
                "from transformers import AutoTokenizer, AutoProcessor",
                "import hf_tts",
                "from transformers import pipeline",
            ],
            ["- False", "configs,feature_extractors,models,processors,tokenizers False", _ALL],
        ),
        (["from transformers import pipeline", "import hf_tts"], ["- True", _ALL]),
        (["from hf_tts import ZeroShotTextToSpeechPipeline"], [_ALL]),
        # Reading a config (merge, inspect) registers the configs only: no modeling code, processors or pipelines.
        (["import hf_tts", "from transformers import AutoConfig"], ["- False", "configs False"]),
    ],
    ids=["hf_tts-auto-pipelines", "auto-hf_tts-pipeline", "pipeline-hf_tts", "package-pipeline", "hf_tts-config"],
)
def test_each_import_order_registers_what_is_imported(steps, states):
    result = subprocess.run(
        [sys.executable, "-c", _ORDER_PROBE.format(steps=steps)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [*states, *_PIPELINE_CLASSES]


def test_pipelines_from_package_folders_work_right_after_import_hf_tts(tmp_path):
    # The real calls, in a fresh interpreter, in the order a user writes them (hf_tts, then transformers' pipeline,
    # no Auto class before): both tasks build from folders.
    from speech_fixtures import f5_dir

    probe = (
        "import hf_tts\n"
        "import torch\n"
        "from transformers import pipeline\n"
        "from hf_tts import CFGMotionConfig, CFGMotionModel\n"
        f"folder = {str(tmp_path / 'motion')!r}\n"
        "config = CFGMotionConfig(architecture='face', nfeats=6, latent_dim=16, heads=2, layers=1, ff_size=32,\n"
        "                         cond_feature_dim=8, cond_encoder_layers=1, num_inference_steps=2, max_cond_len=64)\n"
        "CFGMotionModel(config).save_pretrained(folder)\n"
        "motion = pipeline('audio-to-motion', model=folder, device='cpu')\n"
        "out = motion({'cond_features': torch.zeros(10, 8).numpy()}, num_frames=4, seed=0)\n"
        "print(type(motion).__name__, out['motion'].shape)\n"
        f"speech = pipeline('zero-shot-text-to-speech', model={str(f5_dir())!r}, device='cpu')\n"
        "print(type(speech).__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == ["AudioToMotionPipeline (4, 6)", "ZeroShotTextToSpeechPipeline"]
