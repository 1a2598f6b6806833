"""The `hf-tts` command.

Each subcommand lives in `hf_tts/commands/<module>.py` and exposes `register(subparsers)`, which adds its parser and
sets `func` (called with the parsed namespace, returns an exit code or None). Only the module of the command being
run is imported, so `hf-tts --help` and `hf-tts hub serve` start without torch.

This module is the CLI's one error boundary: an expected failure (bad input, a damaged or missing file, a full
disk, a config that does not validate, a refused resource) is one line on stderr and exit code 2; anything else is
a bug and keeps its traceback, after a one-line summary. SIGTERM is handled like Ctrl-C: outputs in progress are
removed and nothing partial is left. Open progress bars are closed before the error line, so it starts a line.

Python warnings print as one line, `hf-tts COMMAND: warning: ...`. `--quiet`, accepted by every command and
subcommand, silences what goes to stderr besides errors: progress bars (transformers', huggingface_hub's, datasets'
and the package's own, which use `huggingface_hub.utils.tqdm` so that one switch covers them), library logging below
error level, and warnings. The one-line summaries on stdout (`wrote DIR ...`) are kept: they are the command's
result, and scripts read them.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import signal
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import NoReturn

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
    "presets": ("presets", "list the upstream F5-TTS / E2-TTS and motion presets with their key dimensions"),
    "inspect": (
        "inspect",
        "describe a model folder or Hub repo: family, architecture flags, sizes, parameters, vocoder, card",
    ),
}

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a tool killed by a closed pipe reports

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
        self._generic_quiet: argparse.Action | None = None

    def add_argument(self, *args, **kwargs) -> argparse.Action:  # type: ignore[override]
        # A command's own --quiet (e.g. `hub serve`: no access log) takes over the generic one; both mean "less
        # output" and share the dest, so main() still applies the generic part.
        if "--quiet" in args and self._generic_quiet is not None:
            self._handle_conflict_resolve(None, [("--quiet", self._generic_quiet)])
            self._generic_quiet = None
        return super().add_argument(*args, **kwargs)

    def add_generic_quiet(self) -> None:
        """`--quiet` on this (sub)command. SUPPRESS as default: a subcommand that is not given the flag does not
        reset what its parent command was given (`hf-tts convert --quiet f5 ...`)."""
        self._generic_quiet = self.add_argument(
            "--quiet",
            action="store_true",
            default=argparse.SUPPRESS,
            help="only errors on stderr: no progress bars, library logging or warnings (the summary on stdout stays)",
        )

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, _printable(f"{self.prog}: error: {message} (see {self.prog} --help)\n"))


class _Subcommands(argparse._SubParsersAction):
    """Subparsers of the one-line-error kind; a top-level command gets its help line from `COMMANDS`."""

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:  # type: ignore[override]
        if name in COMMANDS:
            kwargs.setdefault("help", COMMANDS[name][1])
        kwargs.setdefault("allow_abbrev", False)
        parser = super().add_parser(name, **kwargs)
        if isinstance(parser, _OneLineErrorParser):
            parser.add_generic_quiet()
        return parser


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
        with contextlib.ExitStack() as stack:
            parser = build_parser(argv)
            args = parser.parse_args(argv)
            command = f"hf-tts {args.command}"
            quiet = bool(getattr(args, "quiet", False))
            stack.enter_context(_one_line_warnings(command, quiet))
            if quiet:
                stack.enter_context(_quiet_libraries())
            try:
                return int(args.func(args) or 0)
            except BaseException:
                _close_progress_bars()
                raise
    except Terminated:
        print(f"{command}: terminated; no output was written", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print(f"{command}: interrupted; no output was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        if not _stdout_closed():
            raise
        # The reader of stdout went away (`hf-tts presets | head -1`): stop quietly, as command-line tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return EXIT_BROKEN_PIPE
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


def _stdout_closed() -> bool:
    """Whether standard output is a pipe whose reader has gone (polling its end reports an error), so that an EPIPE
    from anything else (a socket) is still reported."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


@contextlib.contextmanager
def _one_line_warnings(command: str, quiet: bool) -> Iterator[None]:
    """Python warnings as `hf-tts COMMAND: warning: ...` (one line, no `file:line: UserWarning` source echo), or
    none at all with --quiet. The previous behaviour comes back afterwards (main() may run inside a caller)."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001 (warnings' API)
        text = str(message).strip().splitlines()
        stream = file or sys.stderr
        tqdm_module = sys.modules.get("tqdm.std")
        # Bars in progress are cleared for the line and redrawn below it, rather than overwritten mid-line.
        pause_bars = tqdm_module.tqdm.external_write_mode(file=stream) if tqdm_module else contextlib.nullcontext()
        with pause_bars:
            print(_printable(f"{command}: warning: {text[0] if text else category.__name__}"), file=stream)

    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore")
        warnings.showwarning = show
        yield


# Environment switches read by the libraries when they are imported (which, in the `hf-tts` process, is after main()
# parsed the command line), so --quiet reaches libraries the command has not imported yet.
_QUIET_ENVIRONMENT = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # huggingface_hub's bars, the package's own and transformers' follow it
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "DATASETS_VERBOSITY": "error",
    "TQDM_DISABLE": "1",  # any other tqdm bar created with tqdm's defaults
}


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """--quiet: libraries log errors only and show no progress bars. Set through their environment switches (for
    imports still to come) and their APIs (for modules already imported by a caller of main()); both are restored
    afterwards."""
    saved_environment = {name: os.environ.get(name) for name in _QUIET_ENVIRONMENT}
    os.environ.update(_QUIET_ENVIRONMENT)
    restore: list = []
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
        from huggingface_hub.utils import logging as hub_logging

        if not are_progress_bars_disabled():
            disable_progress_bars()
            restore.append(enable_progress_bars)
        restore.append(_swap_verbosity(hub_logging))
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        if transformers_logging.is_progress_bar_enabled():
            transformers_logging.disable_progress_bar()
            restore.append(transformers_logging.enable_progress_bar)
        restore.append(_swap_verbosity(transformers_logging))
    if "datasets" in sys.modules:
        import datasets

        if datasets.is_progress_bar_enabled():
            datasets.disable_progress_bars()
            restore.append(datasets.enable_progress_bars)
        restore.append(_swap_verbosity(datasets.logging))
    try:
        yield
    finally:
        for undo in reversed(restore):
            undo()
        for name, value in saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _swap_verbosity(library_logging) -> object:  # noqa: ANN001 (transformers / huggingface_hub / datasets logging)
    """Set a library's verbosity to error; returns the call that puts the previous one back."""
    previous = library_logging.get_verbosity()
    library_logging.set_verbosity_error()
    return lambda: library_logging.set_verbosity(previous)


def _close_progress_bars() -> None:
    """Erase the progress bars still open (an error interrupted them), so the error line starts at column 0 instead
    of after a half-drawn bar."""
    tqdm_module = sys.modules.get("tqdm.std")
    if tqdm_module is None:
        return
    for bar in list(getattr(tqdm_module.tqdm, "_instances", ())):
        bar.leave = False
        with contextlib.suppress(OSError, ValueError):  # a bar whose stream is closed has nothing left to clean
            bar.close()


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
    ("httpx2", ("TransportError",), "cannot reach the Hub (HF_ENDPOINT): "),  # huggingface_hub 2's client
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


def run() -> NoReturn:
    """The `hf-tts` program (and `python -m hf_tts.cli`): `main()`, then an exit without module teardown."""
    _exit_without_teardown(main())


def _exit_without_teardown(code: int) -> NoReturn:
    """Exit with `code`, skipping Python's teardown of the modules the command loaded: for torch, transformers and
    matplotlib it takes 0.4 s (a tenth of a small merge) and does nothing a command needs, since every command
    closes its outputs and renames them into place before it returns. Exit handlers (logging, temporary folders)
    still run, and while a non-daemon thread is alive Python exits the normal way, after it."""
    import atexit
    import threading

    others = [thread for thread in threading.enumerate() if thread is not threading.current_thread()]
    if any(thread.is_alive() and not thread.daemon for thread in others):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nobody is reading any more
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
