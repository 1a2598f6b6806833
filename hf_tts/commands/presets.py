"""`hf-tts presets`: the upstream architectures `--arch` accepts (F5-TTS / E2-TTS) and the motion presets, with
their key dimensions. Reads plain dicts (hf_tts.presets): no torch, no transformers."""

from __future__ import annotations

import argparse
import json

# Columns shown per family: (heading, preset key, value when the preset leaves it to the config default).
_SPEECH_COLUMNS = (
    ("dim", "dim", None),
    ("depth", "depth", None),
    ("heads", "heads", None),
    ("ff_mult", "ff_mult", None),
    ("text_dim", "text_dim", "mel_dim"),
    ("conv_layers", "conv_layers", 0),
    ("mask_pad", "text_mask_padding", None),
    ("pe_attn_head", "pe_attn_head", None),
    ("tokenizer", "tokenizer_type", "pinyin"),
)
_MOTION_COLUMNS = (
    ("nfeats", "nfeats", None),
    ("latent_dim", "latent_dim", None),
    ("layers", "layers", None),
    ("cond_dim", "cond_feature_dim", None),
    ("cond_layers", "cond_encoder_layers", None),
    ("keyframes", "use_keyframes", None),
    ("post_conv", "post_conv", None),
    ("guidance", "guidance_scale", None),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "presets",
        description="List the upstream architectures: F5-TTS / E2-TTS presets (what `hf-tts convert f5 --arch` "
        "accepts; dim_head 64 and 100 mel channels throughout) and the CFG motion presets (config.architecture "
        "'face' / 'body'), with their key dimensions.",
    )
    parser.add_argument("--json", action="store_true", help="print the presets as JSON instead of tables")
    parser.set_defaults(func=_run)


def preset_table() -> dict[str, dict[str, dict]]:
    """{family: {preset: fields}} for every family the package knows."""
    from hf_tts.presets import CFG_MOTION_ARCHITECTURES, E2_PRESETS, F5_PRESETS

    return {"F5-TTS": F5_PRESETS, "E2-TTS": E2_PRESETS, "CFG motion": CFG_MOTION_ARCHITECTURES}


def _format(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _table(presets: dict[str, dict], columns: tuple[tuple[str, str, object], ...]) -> list[str]:
    rows = [["preset", *(heading for heading, _, _ in columns)]]
    for name, fields in presets.items():
        rows.append([name, *(_format(fields.get(key, default)) for _, key, default in columns)])
    widths = [max(len(row[index]) for row in rows) for index in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def _run(args: argparse.Namespace) -> int:
    table = preset_table()
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    for family, presets in table.items():
        columns = _MOTION_COLUMNS if family == "CFG motion" else _SPEECH_COLUMNS
        print(f"{family}:")
        for line in _table(presets, columns):
            print(f"  {line}")
        print()
    print("convert an upstream checkpoint: hf-tts convert f5 CKPT --arch PRESET --vocab vocab.txt --out DIR")
    return 0
