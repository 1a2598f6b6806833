"""Packaging metadata lives in setup.cfg. This file adds one build step: the top-level `model_cards/` templates are
shipped inside the package as `hf_tts/model_cards/`, where `hf_tts.hub.cards` finds them in an installed wheel."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

MODEL_CARDS = Path(__file__).resolve().parent / "model_cards"


class BuildPyWithModelCards(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / "hf_tts" / "model_cards"
        target.mkdir(parents=True, exist_ok=True)
        for template in sorted(MODEL_CARDS.glob("*.md.j2")):
            shutil.copy2(template, target / template.name)


setup(cmdclass={"build_py": BuildPyWithModelCards})
