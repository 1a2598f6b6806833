"""The `hf-tts` command.

Each subcommand lives in `hf_tts/commands/<module>.py` and exposes `register(subparsers)`, which adds its parser and
sets `func` (called with the parsed namespace, returns an exit code or None). Only the module of the command being
run is imported, so `hf-tts --help` and `hf-tts hub serve` start without torch.

This module is the CLI's one error boundary: an expected failure (bad input, a damaged or missing file, a full
disk, a config that does not validate, a refused resource) is one line on stderr and exit code 2; anything else is
a bug and keeps its traceback, after a one-line summary. SIGTERM is handled like Ctrl-C: outputs in progress are
removed and nothing partial is left.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import signal
import sys
from collections.abc import Sequence

# Command -> (module under hf_tts.commands, one-line help), in the order `hf-tts --help` lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("convert", "convert an upstream checkpoint into a transformers folder"),
    "merge": ("merge", "average checkpoints of one model (streaming, validated, with a generated model card)"),
    "push": ("push", "upload a model folder and its model card to a Hub (HF_ENDPOINT) in one commit"),
    "hub": ("hub", "the local Hub-compatible model registry"),
    "synthesize": (
        "synthesize",
        "speak a text in the voice of a reference recording (F5-TTS / E2-TTS folder with a vocoder)",
    ),
    "attach-vocoder": (
        "attach_vocoder",
        "save a Vocos vocoder inside an F5-TTS / E2-TTS folder so the folder alone gives speech",
    ),
    "animate": ("animate", "generate face/body motion from audio with a CFG motion model"),
    "finetune": (
        "finetune",
        "fine-tune an F5/E2 or motion model with transformers.Trainer (EMA, frame-bucketed batches)",
    ),
}

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

# OSError numbers that describe the user's files or machine, not a bug.
_ENVIRONMENT_ERRNOS = {
    errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENOSPC,
    errno.EDQUOT, errno.EROFS, errno.ENAMETOOLONG, errno.ELOOP, errno.EIO, errno.EFBIG, errno.ENOTEMPTY,
    errno.EMFILE, errno.ENFILE, errno.ETXTBSY, errno.EXDEV, errno.ENXIO, errno.ENODEV, errno.EBUSY,
}  # fmt: skip


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every cleanup path that handles an interrupt handles it too."""


class _OneLineErrorParser(argparse.ArgumentParser):
    """argparse prints the whole usage on an error; the CLI contract is one clear line on stderr and exit 2.
    Abbreviated options (`--see` for `--seed`) are refused: a typo must not silently pick another option."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _Subcommands)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, _printable(f"{self.prog}: error: {message} (see {self.prog} --help)\n"))


class _Subcommands(argparse._SubParsersAction):
    """Subparsers of the one-line-error kind; a top-level command gets its help line from `COMMANDS`."""

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:  # type: ignore[override]
        if name in COMMANDS:
            kwargs.setdefault("help", COMMANDS[name][1])
        kwargs.setdefault("allow_abbrev", False)
        return super().add_parser(name, **kwargs)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with `argv`, only the command it names is fully built (the others are listed for --help)."""
    from hf_tts import __version__

    parser = _OneLineErrorParser(prog="hf-tts", description="F5-TTS / E2-TTS / Vocos / CFG motion tools.")
    parser.add_argument("--version", action="version", version=f"hf-tts {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_OneLineErrorParser)
    subparsers.required = True
    selected = None if argv is None else next((arg for arg in argv if not arg.startswith("-")), None)
    for name, (module, _) in COMMANDS.items():
        if argv is None or name == selected:
            importlib.import_module(f"hf_tts.commands.{module}").register(subparsers)
        else:
            subparsers.add_parser(name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    previous = _install_signal_handlers()
    command = "hf-tts"
    try:
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        command = f"hf-tts {args.command}"
        return int(args.func(args) or 0)
    except Terminated:
        print(f"{command}: terminated; no output was written", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print(f"{command}: interrupted; no output was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        message = expected_error_message(error)
        if message is None:
            summary = str(error).strip().splitlines()[0] if str(error).strip() else ""
            print(
                _printable(
                    f"{command}: internal error ({type(error).__name__}: {summary[:300]}); this is a bug, please "
                    "report it with the traceback below"
                ),
                file=sys.stderr,
            )
            raise
        print(_printable(f"{command}: error: {message}"), file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        _restore_signal_handlers(previous)


def expected_error_message(error: BaseException) -> str | None:
    """One line describing an expected failure, or None for an exception that is a bug."""
    from hf_tts.errors import InputError

    if isinstance(error, InputError):
        return _first_line(error)
    if isinstance(error, MemoryError):
        return "out of memory; use a smaller input or a machine with more memory"
    if isinstance(error, UnicodeError):
        return f"text that is not valid UTF-8 or cannot be encoded ({_first_line(error)}); check the text and files"
    if isinstance(error, OSError) and error.errno in _ENVIRONMENT_ERRNOS:
        where = f"{error.filename}: " if error.filename else ""
        hint = {errno.ENOSPC: " (the disk is full; free space and run again)", errno.EDQUOT: " (disk quota)"}
        return f"{where}{error.strerror or _first_line(error)}{hint.get(error.errno, '')}"
    for module_name, class_names, prefix in _LIBRARY_ERRORS:
        module = sys.modules.get(module_name)
        for class_name in class_names:
            error_class = getattr(module, class_name, None) if module is not None else None
            if isinstance(error_class, type) and isinstance(error, error_class):
                return f"{prefix}{_first_line(error)}"
    return None


# Expected failures raised by libraries: (module, exception classes, message prefix). Looked up only when the module
# is already imported, so the boundary itself imports nothing.
_LIBRARY_ERRORS = (
    ("safetensors", ("SafetensorError",), "damaged safetensors file: "),
    (
        "huggingface_hub.errors",
        ("StrictDataclassFieldValidationError", "StrictDataclassClassValidationError"),
        "invalid config: ",
    ),
    (
        "huggingface_hub.errors",
        (
            "RepositoryNotFoundError",
            "RevisionNotFoundError",
            "EntryNotFoundError",
            "LocalEntryNotFoundError",
            "GatedRepoError",
            "HfHubHTTPError",
            "OfflineModeIsEnabled",
            "HFValidationError",
        ),
        "Hub: ",
    ),
    ("httpx", ("TransportError",), "cannot reach the Hub (HF_ENDPOINT): "),
)


def _printable(text: str) -> str:
    """`text` with lone surrogates (undecodable bytes of the command line, as Linux hands them to Python) escaped,
    so an error message quoting the user's input can always be printed."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _install_signal_handlers() -> dict[int, object]:
    """SIGINT and SIGTERM raise KeyboardInterrupt / Terminated (after a commit in progress, never inside it)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    from hf_tts.safe_output import deliver_signal

    def on_signal(signum: int, frame: object) -> None:
        deliver_signal(Terminated() if signum == signal.SIGTERM else KeyboardInterrupt())

    return {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}


def _restore_signal_handlers(previous: dict[int, object]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
