"""The `hf-tts` command.

Each subcommand lives in `hf_tts/commands/<name>.py` and exposes `register(subparsers)`, which adds its parser and
sets `func` (called with the parsed namespace, returns an exit code or None). This module only dispatches and turns
bad input into one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules under hf_tts.commands, in the order `hf-tts --help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "convert",
    "merge",
    "push",
    "hub",
    "synthesize",
    "attach_vocoder",
    "animate",
    "finetune",
)

EXIT_BAD_INPUT = 2


class _OneLineErrorParser(argparse.ArgumentParser):
    """argparse prints the whole usage on an error; the CLI contract is one clear line on stderr and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrorParser(prog="hf-tts", description="F5-TTS / E2-TTS / Vocos / CFG motion tools.")
    from hf_tts import __version__

    parser.add_argument("--version", action="version", version=f"hf-tts {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_OneLineErrorParser)
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"hf_tts.commands.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Imported late so `--help` stays fast and the error classes come from the registered package.
    from hf_tts.errors import InputError

    try:
        code = args.func(args)
    except (InputError, FileNotFoundError, IsADirectoryError, NotADirectoryError, FileExistsError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"hf-tts {args.command}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"hf-tts {args.command}: interrupted; no output was written", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
