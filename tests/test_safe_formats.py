"""Strict readers of hostile files (hf_tts.file_utils): safetensors headers as strict as safetensors itself, YAML
without alias bombs or tags, NaN/Inf checks; and the CLI's error boundary (one line, exit 2, or a bug's
traceback)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hf_tts.cli import expected_error_message, main
from hf_tts.errors import InputError
from hf_tts.file_utils import MAX_YAML_DEPTH, check_finite, load_yaml, read_safetensors_header


def _safetensors(path, header: dict, data: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def _raw_header(path, raw: bytes, data: bytes = b"") -> None:
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def test_valid_file_reads_like_safetensors(tmp_path):
    path = tmp_path / "ok.safetensors"
    save_file({"a": torch.zeros(2, 3), "b": torch.ones(4, dtype=torch.int64)}, path, metadata={"format": "pt"})
    header, start = read_safetensors_header(path)
    with safe_open(path, "pt") as handle:
        assert set(handle.keys()) == set(header) - {"__metadata__"}
    assert header["a"]["shape"] == [2, 3] and start == 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]


F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
DAMAGED = {
    # a duplicate key pointing at another tensor's bytes would merge the wrong data
    "duplicate key": (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                      b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}', b"\0" * 8, "names 'a' twice"),
    "non-dict metadata": (json.dumps({"__metadata__": [1], "a": F32}).encode(), b"\0" * 8, "__metadata__"),
    "non-string metadata": (json.dumps({"__metadata__": {"k": 1}, "a": F32}).encode(), b"\0" * 8, "__metadata__"),
    "trailing garbage": (json.dumps({"a": F32}).encode(), b"\0" * 8 + b"junk", "trailing bytes"),
    "truncated data": (json.dumps({"a": F32}).encode(), b"\0" * 4, "truncated"),
    "overlap": (json.dumps({"a": F32, "b": F32}).encode(), b"\0" * 8, "overlaps"),
    "gap": (json.dumps({"a": {**F32, "data_offsets": [4, 12]}}).encode(), b"\0" * 12, "gap"),
    "size mismatch": (json.dumps({"a": {**F32, "shape": [3]}}).encode(), b"\0" * 8, "needs 12 bytes"),
    "unknown dtype": (json.dumps({"a": {**F32, "dtype": "F128"}}).encode(), b"\0" * 8, "unknown dtype"),
    "bool shape": (json.dumps({"a": {**F32, "shape": [True, 2]}}).encode(), b"\0" * 8, "invalid shape"),
    "negative offsets": (json.dumps({"a": {**F32, "data_offsets": [-8, 0]}}).encode(), b"", "data_offsets"),
    "extra field": (json.dumps({"a": {**F32, "extra": 1}}).encode(), b"\0" * 8, "entry"),
    "not an object": (b"[1, 2]", b"", "not a JSON object"),
    "not json": (b"{nope", b"", "not valid JSON"),
    "not utf-8": (b'{"\xff": 1}', b"", "not valid JSON"),
}  # fmt: skip


@pytest.mark.parametrize("case", DAMAGED)
def test_damaged_headers_are_refused(tmp_path, case):
    raw, data, message = DAMAGED[case]
    path = tmp_path / "bad.safetensors"
    _raw_header(path, raw, data)
    with pytest.raises(InputError, match=message):
        read_safetensors_header(path)


def test_header_size_bomb_is_refused_without_reading(tmp_path):
    path = tmp_path / "bomb.safetensors"
    path.write_bytes(struct.pack("<Q", 2**63) + b"{}")
    with pytest.raises(InputError, match="claims"):
        read_safetensors_header(path)


def test_yaml_alias_bomb_tags_and_depth_are_refused_fast():
    # 747 bytes of nested aliases expand to billions of nodes in a plain YAML loader
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
    )
    started = time.monotonic()
    for text, message in (
        (bomb, "anchors and aliases"),
        ("a: !!python/object:os.system ls", "tags"),
        ("a: !!binary aGk=", "tags"),
        ("[" * 50_000, "nested deeper"),
        ("x: " + "[" * (MAX_YAML_DEPTH + 1) + "]" * (MAX_YAML_DEPTH + 1), "nested deeper"),
        ("a: [1, 2", "not valid YAML at line"),
        ("x" * (2 << 20), "larger than"),
        (b"a: \xff", "not UTF-8"),
    ):
        with pytest.raises(InputError, match=message):
            load_yaml(text, "recipe.yaml")
    assert time.monotonic() - started < 30  # generous: the point is that nothing expands
    assert load_yaml("a: 1\nb: [x, {c: 2.5}]\nd: 'no'\n", "ok.yaml") == {"a": 1, "b": ["x", {"c": 2.5}], "d": "no"}


def test_check_finite_names_what_is_wrong():
    check_finite(torch.ones(3), "mel")
    check_finite(torch.arange(3), "ids")  # integers cannot be NaN
    check_finite(np.zeros(2, dtype=np.float32), "wave")
    with pytest.raises(InputError, match="merged tensor w contains 2 NaN or Inf values"):
        check_finite(torch.tensor([1.0, float("nan"), float("inf")]), "merged tensor w")
    with pytest.raises(InputError, match="motion contains 1 NaN or Inf value$"):
        check_finite(np.array([np.nan, 1.0]), "motion")


def test_expected_errors_are_one_line_and_bugs_are_not(tmp_path):
    from huggingface_hub.errors import StrictDataclassFieldValidationError
    from safetensors import SafetensorError

    assert expected_error_message(InputError("bad --speed\nsecond line")) == "bad --speed"
    assert "Permission denied" in expected_error_message(PermissionError(13, "Permission denied", "/x"))
    assert "/x: No space left" in expected_error_message(OSError(28, "No space left on device", "/x"))
    assert "invalid config" in expected_error_message(StrictDataclassFieldValidationError("depth", "no"))
    assert "damaged safetensors" in expected_error_message(SafetensorError("header too large"))
    assert "UTF-8" in expected_error_message(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"))
    for bug in (KeyError("x"), TypeError("y"), ZeroDivisionError(), OSError(9, "Bad file descriptor")):
        assert expected_error_message(bug) is None


def test_cli_reports_expected_errors_in_one_line(capsys, monkeypatch):
    from hf_tts.commands import push

    def refuse(args):
        raise PermissionError(13, "Permission denied", "/root/secret")

    monkeypatch.setattr(push, "_run", refuse, raising=False)
    parser_run = push.register

    def register(subparsers):
        parser_run(subparsers)
        subparsers.choices["push"].set_defaults(func=refuse)

    monkeypatch.setattr(push, "register", register)
    assert main(["push", "folder", "org/name"]) == 2
    assert capsys.readouterr().err == "hf-tts push: error: /root/secret: Permission denied\n"


def test_cli_bug_keeps_its_traceback_after_a_summary():
    script = (
        "import sys\nfrom hf_tts.commands import push\nreg = push.register\n"
        "def register(sub):\n    reg(sub)\n    sub.choices['push'].set_defaults(func=lambda a: {}['boom'])\n"
        "push.register = register\nfrom hf_tts.cli import main\nsys.exit(main(['push', 'f', 'o/n']))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    first, *rest = result.stderr.strip().splitlines()
    assert first.startswith("hf-tts push: internal error (KeyError: 'boom'); this is a bug")
    assert rest[0].startswith("Traceback") and rest[-1] == "KeyError: 'boom'"


def test_cli_refuses_abbreviated_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["push", "folder", "org/name", "--priv"])  # --private, abbreviated
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert len(error.splitlines()) == 1 and "unrecognized arguments: --priv" in error


def test_ctrl_c_while_the_command_imports_is_one_line(capsys, monkeypatch):
    import importlib

    real_import = importlib.import_module

    def interrupted(name, *args):
        if name.startswith("hf_tts.commands."):
            raise KeyboardInterrupt
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", interrupted)
    assert main(["merge", "a", "b", "--out", "c"]) == 130
    assert capsys.readouterr().err == "hf-tts: interrupted; no output was written\n"


def test_undecodable_command_line_bytes_are_printed_escaped(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Linux hands undecodable argv bytes to Python as lone surrogates; the message quoting them must still print.
    (tmp_path / "vocab.txt").write_text("a\n")
    argv = ["convert", "f5", "x\udcff.safetensors", "--arch", "F5TTS_v1_Base", "--vocab", "vocab.txt", "--out", "o"]
    assert main(argv) == 2
    assert "x\\udcff.safetensors" in capsys.readouterr().err
