"""The model card templates ship inside the wheel: build it, install it into a fresh venv, render a card there."""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import PROJECT_ROOT

# What a fresh clone holds that the build does not need (and that may be large or busy in a working tree).
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv*", ".bench_venv", "build", "dist", "*.egg-info", "__pycache__", "demo_out", ".*_cache", "tests"
)


def _run(*command: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def test_installed_wheel_renders_cards_from_its_own_templates(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(PROJECT_ROOT, source, ignore=_NOT_SOURCE)
    wheels = tmp_path / "wheels"
    _run(sys.executable, "-m", "pip", "wheel", source, "--no-deps", "--no-build-isolation", "-q", "-w", wheels)
    (wheel,) = wheels.glob("hf_tts-*.whl")

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel)
    # The dependencies (torch, transformers, ...) come from this interpreter's site-packages, after the venv's own,
    # so `hf_tts` itself is the installed wheel and not this checkout.
    venv_site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    (venv_site / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    script = textwrap.dedent(
        """
        import hf_tts
        from hf_tts.hub.cards import available_kinds, model_cards_dir, render_model_card
        from hf_tts.models.f5.configuration_f5 import F5TTSConfig

        card = render_model_card(kind="f5", config=F5TTSConfig(depth=3), base_model="SWivid/F5-TTS",
                                 base_model_relation="finetune", model_id="org/voice")
        print(hf_tts.__file__)
        print(model_cards_dir())
        print(",".join(available_kinds()))
        print(card.data.library_name, card.data.base_model, "depth-3" if "| `depth` | `3` |" in card.text else "")
        """
    )
    module_file, templates, kinds, card_line = _run(python, "-c", script, cwd=tmp_path).strip().splitlines()[-4:]
    assert Path(module_file).is_relative_to(venv_site)
    assert Path(templates) == venv_site / "hf_tts" / "model_cards"
    assert {"f5", "e2", "vocos", "cfg_motion", "finetune", "merge"} <= set(kinds.split(","))
    assert card_line == "hf-tts SWivid/F5-TTS depth-3"
