"""Subcommands of `hf-tts`; each module has `register(subparsers)` (see hf_tts/cli.py)."""
