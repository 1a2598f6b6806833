"""`hf-tts convert FAMILY ...`: upstream checkpoints -> `save_pretrained` folders.

Each family lives in `hf_tts/commands/convert_<family>.py` with `register(family_subparsers)`; the readers of the
upstream formats themselves live in `hf_tts/convert/`.
"""

from __future__ import annotations

import argparse
import importlib

# Families in the order `hf-tts convert --help` lists them.
CONVERT_FAMILIES: tuple[str, ...] = ("f5", "vocos", "a2p")
# The precisions a converted folder can be saved in (hf_tts.convert.f5.SAVE_DTYPES, named here so that --help does
# not import torch).
SAVE_DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")


def add_dtype_option(parser: argparse.ArgumentParser) -> None:
    """`--dtype`, the same for every family."""
    parser.add_argument(
        "--dtype",
        choices=SAVE_DTYPES,
        default="float32",
        help="precision of the saved weights (default float32, which keeps upstream's values exactly; float16 / "
        "bfloat16 halve the folder)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("convert", help="convert an upstream checkpoint into a transformers folder")
    families = parser.add_subparsers(dest="family", metavar="FAMILY", parser_class=type(parser))
    families.required = True
    for family in CONVERT_FAMILIES:
        importlib.import_module(f"hf_tts.commands.convert_{family}").register(families)
