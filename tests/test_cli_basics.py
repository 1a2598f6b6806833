"""`hf-tts` basics: --help of the command tree, argument errors in one line with exit 2, the console script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hf_tts.cli import main
from tests.conftest import upstream_fixture


def test_help_lists_convert_families(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "f5" in out and "vocos" in out


def test_convert_f5_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", "f5", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--arch", "--vocab", "--out", "--use-online-weights", "--overwrite", "F5TTS_v1_Base", "E2TTS_Base"):
        assert option in out


@pytest.mark.parametrize(
    "argv",
    [[], ["convert"], ["convert", "f5"], ["convert", "f5", "ckpt.pt", "--arch", "F5TTS_v1_Base", "--vocab", "v.txt"]],
)
def test_missing_arguments_exit_2_with_one_line(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err


def test_console_script_converts(tmp_path):
    # The installed `hf-tts` entry point, as users run it.
    script = Path(sys.executable).with_name("hf-tts")
    folder = upstream_fixture("f5_v1_tiny")
    out = tmp_path / "converted"
    result = subprocess.run(
        [str(script), "convert", "f5", str(folder / "model_ema.safetensors"), "--arch", str(folder / "arch.json"),
         "--vocab", str(upstream_fixture("f5_vocab.txt")), "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"wrote {out} (hf_tts_f5, architecture F5TTS_v1_custom, EMA weights in float32)" in result.stdout
    assert {"config.json", "model.safetensors", "tokenizer_config.json", "vocab.txt"} <= {p.name for p in out.iterdir()}
    again = subprocess.run(
        [str(script), "convert", "f5", str(folder / "model_ema.safetensors"), "--arch", "E2TTS_Base",
         "--vocab", str(upstream_fixture("f5_vocab.txt")), "--out", str(tmp_path / "other")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1 and "is F5-TTS (DiT) but --arch E2TTS_Base is E2-TTS (UNetT)" in again.stderr
    assert not (tmp_path / "other").exists()


EXIT_PROGRAM = """
import atexit, sys, threading, time
from hf_tts.cli import _exit_without_teardown
atexit.register(lambda: print("exit handler ran"))
print("buffered result line")  # stdout is a pipe: block-buffered, only flushed at exit
if sys.argv[1] == "thread":
    def late_write():
        time.sleep(0.3)
        open(sys.argv[2], "w").write("written after the command returned")
    threading.Thread(target=late_write).start()
_exit_without_teardown(3)
"""


@pytest.mark.parametrize("with_thread", [False, True])
def test_exit_without_teardown_keeps_output_handlers_and_threads(tmp_path, with_thread):
    # The console script skips module teardown after the command; buffered output, exit handlers and the exit code
    # must survive that, and a non-daemon thread still running must finish first.
    marker = tmp_path / "late.txt"
    result = subprocess.run(
        [sys.executable, "-c", EXIT_PROGRAM, "thread" if with_thread else "none", str(marker)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert result.stdout.splitlines() == ["buffered result line", "exit handler ran"]
    assert marker.exists() == with_thread
    if with_thread:
        assert marker.read_text() == "written after the command returned"
