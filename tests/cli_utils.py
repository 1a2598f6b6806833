"""Helpers for tests that drive `hf-tts` in-process: run a command, read its one error line, fingerprint files."""

from __future__ import annotations

import hashlib
from pathlib import Path

from hf_tts.cli import main


def cli(*arguments) -> int:
    """`hf-tts ARGUMENTS` in-process; argparse's own refusals (SystemExit) count as their exit code."""
    try:
        return main([str(argument) for argument in arguments])
    except SystemExit as exit:
        return int(exit.code)


def one_error_line(capsys) -> str:
    """The captured stderr, asserted to be exactly one line."""
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    return error


def tree_digest(path: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `path` (or of `path` itself), to show inputs are unchanged."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
