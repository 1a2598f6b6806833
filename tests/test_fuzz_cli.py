"""Property test over every command line: random option values and arguments (built from each parser's own option
table) give exit 0, or exit 2 with exactly one line on stderr: never a traceback, never exit 1, and nothing written
outside the test's folder. The per-command fuzz tests (tests/test_fuzz_*.py) go deeper on valid inputs; this one
covers every option of every command at once. `hub` is left out: `hub serve` runs until stopped (the registry has
its own tests)."""

from __future__ import annotations

import argparse
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hf_tts.cli import COMMANDS, build_parser, main
from tests.fuzz import FUZZ

# Values that break naive parsers: empty, whitespace, non-finite and huge numbers, negative zero, path tricks,
# unicode, lone surrogates (what Linux hands Python for undecodable argv bytes), option-like strings.
_NASTY = [
    "", " ", "nan", "inf", "-inf", "1e308", "-1", "0", "-0.0", "2**70", "1180591620717411303424", "0x10",
    ".", "..", "/", "/dev/null", "~", "a/b", "org/name", "x.safetensors", "x.pt", "x.yaml", "x.wav", "x.npy",
    "é", "\udcff", "--", "-x", "true", "null",
]  # fmt: skip
# argv strings cannot hold NUL (C strings), so none is generated.
_values = (
    st.sampled_from(_NASTY)
    | st.text(st.characters(blacklist_characters="\x00"), max_size=12)
    | st.integers(-(2**70), 2**70).map(str)
)


def _leaf_parsers(
    parser: argparse.ArgumentParser, prefix: list[str]
) -> list[tuple[list[str], argparse.ArgumentParser]]:
    """(argv prefix, parser) for every runnable command, descending into sub-commands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return [leaf for name, sub in action.choices.items() for leaf in _leaf_parsers(sub, [*prefix, name])]
    return [(prefix, parser)]


def _commands() -> list[tuple[list[str], argparse.ArgumentParser]]:
    leaves = []
    for name in COMMANDS:
        if name == "hub":
            continue
        top = build_parser([name])
        sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
        leaves.extend(_leaf_parsers(sub, [name]))
    return leaves


COMMAND_LINES = _commands()


@st.composite
def _argv(draw, prefix: list[str], parser: argparse.ArgumentParser) -> list[str]:
    argv = list(prefix)
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if not action.option_strings:  # positional: usually required
            count = 1 if action.nargs in (None, 1) else draw(st.integers(0, 3))
            argv.extend(draw(_values) for _ in range(count))
        elif draw(st.integers(0, 3)) == 0 or action.required:
            flag = draw(st.sampled_from(action.option_strings))
            if action.nargs == 0:
                argv.append(flag)
            else:
                count = 1 if action.nargs in (None, 1, "?") else draw(st.integers(1, 3))
                argv.extend([flag, *(draw(_values) for _ in range(count))])
    return argv


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """Runs in an empty folder, offline (a random `a/b` must not reach for the public Hub)."""
    from huggingface_hub import constants

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    return work


@pytest.mark.parametrize("prefix, parser", COMMAND_LINES, ids=[" ".join(p) for p, _ in COMMAND_LINES])
def test_random_command_lines_exit_cleanly(sandbox, capsys, prefix, parser):
    @FUZZ
    @given(st.data())
    def run(data):
        argv = data.draw(_argv(prefix, parser))
        try:
            code = main(argv)
        except SystemExit as exit_info:  # argparse: --help / --version (0) or a usage error (2)
            code = exit_info.code
        captured = capsys.readouterr()
        assert code in (0, 2), f"{argv!r} exited {code}: {captured.err[-2000:]}"
        if code == 2:
            lines = captured.err.strip().splitlines()
            assert len(lines) == 1, f"{argv!r}: {captured.err[-2000:]}"
            assert "Traceback" not in captured.err

    before = set(os.listdir(sandbox.parent))
    run()
    assert set(os.listdir(sandbox.parent)) <= before | {"hf-home"}
