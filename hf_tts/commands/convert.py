"""`hf-tts convert FAMILY ...`: upstream checkpoints -> `save_pretrained` folders.

Each family lives in `hf_tts/commands/convert_<family>.py` with `register(family_subparsers)`; the readers of the
upstream formats themselves live in `hf_tts/convert/`.
"""

from __future__ import annotations

import argparse
import importlib

# Families in the order `hf-tts convert --help` lists them.
CONVERT_FAMILIES: tuple[str, ...] = ("f5", "vocos", "a2p")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("convert", help="convert an upstream checkpoint into a transformers folder")
    families = parser.add_subparsers(dest="family", metavar="FAMILY", parser_class=type(parser))
    families.required = True
    for family in CONVERT_FAMILIES:
        importlib.import_module(f"hf_tts.commands.convert_{family}").register(families)
