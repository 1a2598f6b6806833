"""Output safety (hf_tts.safe_output): where outputs may go, what --overwrite may replace, concurrent writers, and
what SIGTERM / SIGKILL leave behind. The CLI runs in subprocesses where signals matter."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hf_tts.errors import InputError
from hf_tts.file_utils import atomic_output_dir, atomic_write_file, check_output_target
from hf_tts.safe_output import remove_stale_staging
from tests.merge_utils import make_f5_folder, tree_sha256


def _entries(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def _model_folder(path: Path, marker: str = "old") -> Path:
    path.mkdir()
    (path / "config.json").write_text("{}")
    (path / "weights.bin").write_text(marker)
    return path


@pytest.mark.parametrize("out", ["", " ", None])
def test_empty_output_is_refused(out):
    with pytest.raises(InputError, match="output path is empty"):
        check_output_target(out, overwrite=True)


def test_root_home_current_folder_and_its_ancestors_are_refused(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    for out in ("/", str(tmp_path / "home"), ".", str(work), "..", str(tmp_path)):
        with pytest.raises(InputError, match="refusing to write"):
            check_output_target(out, overwrite=True)
    assert check_output_target("new-model") == work / "new-model"


def test_output_may_not_be_contain_or_lie_inside_an_input(tmp_path):
    checkpoint_dir = tmp_path / "ck"
    checkpoint_dir.mkdir()
    checkpoint = checkpoint_dir / "x.safetensors"
    checkpoint.write_bytes(b"weights")
    source = _model_folder(tmp_path / "inputA")
    cases = {
        checkpoint_dir: "contains the input",  # `convert f5 ck/x.safetensors --out ck --overwrite`
        checkpoint: "is the input",
        source: "is the input",
        source / "sub": "lies inside the input",
        tmp_path: "contains the input",
    }
    for out, message in cases.items():
        with pytest.raises(InputError, match=message):
            check_output_target(out, inputs=[checkpoint, source, None, "org/hub-id"], overwrite=True)
    # through a symlinked parent the real paths still collide
    (tmp_path / "alias").symlink_to(source)
    with pytest.raises(InputError, match="lies inside the input"):
        check_output_target(tmp_path / "alias" / "sub", inputs=[source])
    assert checkpoint.read_bytes() == b"weights" and (source / "weights.bin").read_text() == "old"


def test_non_regular_targets_are_refused_even_with_overwrite(tmp_path):
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    link = tmp_path / "link.wav"
    link.symlink_to(tmp_path / "elsewhere.wav")
    folder = tmp_path / "folder.wav"
    folder.mkdir()
    for target, message in ((fifo, "not a regular file"), (link, "symbolic link"), (folder, "is a folder")):
        with pytest.raises(InputError, match=message):
            atomic_write_file(target, lambda stream: stream.write(b"x"), overwrite=True)
    with pytest.raises(InputError, match="not a regular file"):
        check_output_target("/dev/null", overwrite=True, kind="file")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is not a folder"):
        check_output_target(tmp_path / "file", overwrite=True)
    with pytest.raises(InputError, match="is not a folder"):
        check_output_target(tmp_path / "file" / "sub" / "out", overwrite=True)
    assert fifo.exists() and link.is_symlink() and not (tmp_path / "elsewhere.wav").exists()


def test_overwrite_replaces_only_model_folders_or_empty_ones(tmp_path):
    documents = tmp_path / "documents"
    documents.mkdir()
    (documents / "thesis.tex").write_text("years of work")
    with pytest.raises(InputError, match="not replaced even with --overwrite"):
        check_output_target(documents, overwrite=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_output_dir(empty, overwrite=True) as staging:
        (staging / "config.json").write_text("{}")
    model = _model_folder(tmp_path / "model")
    with atomic_output_dir(model, overwrite=True) as staging:
        (staging / "config.json").write_text('{"new": 1}')
    assert _entries(model) == ["config.json"] and (documents / "thesis.tex").exists()


def test_output_created_while_the_run_worked_is_never_replaced_without_overwrite(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(InputError, match="already exists"), atomic_output_dir(target) as staging:
        (staging / "config.json").write_text("{}")
        _model_folder(target, marker="someone else's")  # appears after the start-of-run check
    assert (target / "weights.bin").read_text() == "someone else's"
    assert _entries(tmp_path) == ["out"]


def test_two_writers_to_one_new_output_one_wins_cleanly(tmp_path):
    target = tmp_path / "out"
    first, second = atomic_output_dir(target), atomic_output_dir(target)
    for writer, name in ((first, "first"), (second, "second")):
        (writer.__enter__() / "config.json").write_text(json.dumps(name))  # both pass the start-of-run check
    first.__exit__(None, None, None)
    with pytest.raises(InputError, match="already exists"):
        second.__exit__(None, None, None)
    assert json.loads((target / "config.json").read_text()) == "first"
    assert _entries(tmp_path) == ["out"]


def test_failed_final_rename_puts_the_previous_output_back(tmp_path, monkeypatch):
    import hf_tts.safe_output as safe_output

    target = _model_folder(tmp_path / "out")

    def broken_rename(source, destination):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(safe_output, "_rename_noreplace", broken_rename)
    with pytest.raises(OSError), atomic_output_dir(target, overwrite=True) as staging:
        (staging / "config.json").write_text("{}")
    assert (target / "weights.bin").read_text() == "old" and _entries(tmp_path) == ["out"]


def test_stale_entries_are_cleaned_and_a_moved_aside_output_restored(tmp_path):
    (tmp_path / ".out.hf-tts-4242-0123abcd.staging").mkdir()
    (tmp_path / ".out.hf-tts-4242-0123abcd.staging" / "half.bin").write_bytes(b"x" * 100)
    (tmp_path / ".out.hf-tts-4242-0123abcd.lock").write_text(json.dumps({"pid": 4242, "target": "out"}))
    # an overwrite killed between "old output moved aside" and "new one in place"
    _model_folder(tmp_path / ".model.hf-tts-4343-89abcdef.old", marker="previous")
    (tmp_path / ".speech.wav.hf-tts-4444-00000000.staging").write_bytes(b"RIFF")
    (tmp_path / "unrelated.txt").write_text("keep")
    removed = remove_stale_staging(tmp_path)
    assert len(removed) == 3
    assert _entries(tmp_path) == ["model", "unrelated.txt"]
    assert (tmp_path / "model" / "weights.bin").read_text() == "previous"


# A child that stops inside the final step of a write, with its staging complete, until it is signalled.
_HOLD_BEFORE_COMMIT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import hf_tts.safe_output as safe_output

    commit = safe_output._Staging.commit
    ready, hold, command = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]

    def held_commit(self, overwrite):
        if self.kind == "dir":  # the output folder, not the hash-cache files written on the way
            ready.write_text("ready")
            time.sleep(hold)
        commit(self, overwrite)

    safe_output._Staging.commit = held_commit
    from hf_tts.cli import run

    sys.argv[1:] = command
    run()  # what the `hf-tts` program runs
    """
)


def _start_held(tmp_path: Path, hold: float, argv: list[str]) -> tuple[subprocess.Popen, Path]:
    ready = tmp_path / "ready"
    ready.unlink(missing_ok=True)
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLD_BEFORE_COMMIT, str(ready), str(hold), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not ready.exists():
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            raise AssertionError(f"the child never reached its write: {child.communicate()}")
        time.sleep(0.05)
    return child, ready


@pytest.fixture(scope="module")
def merge_sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("signal-sources")
    return [make_f5_folder(root / f"src{i}", seed=i) for i in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_mid_write_leave_nothing(tmp_path, merge_sources, signum):
    before = {source: tree_sha256(source) for source in merge_sources}
    out = tmp_path / "merged"
    child, _ = _start_held(tmp_path, 60, ["merge", *map(str, merge_sources), "--out", str(out)])
    assert any(".hf-tts-" in name for name in os.listdir(tmp_path))  # the staging folder exists now
    child.send_signal(signum)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == (143 if signum == signal.SIGTERM else 130), stderr
    assert stderr.strip().endswith("no output was written") and len(stderr.strip().splitlines()) == 1
    assert _entries(tmp_path) == ["ready"]
    assert {source: tree_sha256(source) for source in merge_sources} == before


@pytest.mark.slow
def test_sigkill_mid_write_is_cleaned_by_the_next_run(tmp_path, merge_sources):
    out = tmp_path / "merged"
    argv = ["merge", *map(str, merge_sources), "--out", str(out)]
    child, ready = _start_held(tmp_path, 60, argv)
    # A second writer while the first is alive must leave the live staging alone.
    assert remove_stale_staging(tmp_path) == []
    child.kill()
    child.communicate(timeout=60)
    leftovers = [name for name in os.listdir(tmp_path) if ".hf-tts-" in name]
    assert leftovers and not out.exists()
    ready.unlink()
    rerun = subprocess.run([sys.executable, "-m", "hf_tts.cli", *argv], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert _entries(tmp_path) == ["merged"]
    assert (out / "model.safetensors").is_file()


@pytest.mark.slow
def test_sigkill_during_overwrite_keeps_the_previous_output(tmp_path, merge_sources):
    out = tmp_path / "merged"
    argv = ["merge", *map(str, merge_sources), "--out", str(out)]
    assert subprocess.run([sys.executable, "-m", "hf_tts.cli", *argv], capture_output=True, timeout=300).returncode == 0
    previous = tree_sha256(out)
    child, ready = _start_held(tmp_path, 60, [*argv, "--weights", "0.3", "0.7", "--overwrite"])
    child.kill()
    child.communicate(timeout=60)
    ready.unlink()
    assert tree_sha256(out) == previous
    remove_stale_staging(tmp_path)
    assert _entries(tmp_path) == ["merged"] and tree_sha256(out) == previous


def test_finished_folders_get_ordinary_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_output_dir(tmp_path / "out") as staging:
            private = staging / "sub" / "model.safetensors"
            private.parent.mkdir()
            private.write_bytes(b"x")
            private.chmod(0o600)  # what safetensors and mkstemp create
            (staging / "sub").chmod(0o700)
    finally:
        os.umask(umask)
    assert oct((tmp_path / "out" / "sub" / "model.safetensors").stat().st_mode & 0o777) == oct(0o644)
    assert oct((tmp_path / "out" / "sub").stat().st_mode & 0o777) == oct(0o755)
