"""Batch jobs: `model.synthesize_batch` (chunks of several requests sharing solves), the pipeline over a list of
requests with `batch_size`, and `hf-tts synthesize --batch JOBS --out-dir DIR` (resume, per-row failures)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile
import torch
from speech_fixtures import f5_dir, reference_wave
from transformers import AutoModel, pipeline

from hf_tts.cli import main
from hf_tts.errors import InputError

REF_TEXT = "Some reference words"
OPTIONS = dict(nfe_step=2, dtype=torch.float32)


def second_voice() -> np.ndarray:
    """Another reference: the fixture's first 0.8 s, louder (a different prompt length and level)."""
    return (reference_wave()[: int(0.8 * 24000)] * 1.5).astype(np.float32)


REQUESTS = [
    {"text": "Hello there, how are you?", "ref_audio": reference_wave(), "ref_text": REF_TEXT, "seed": 1},
    {"text": "A second voice. It says two things.", "ref_audio": second_voice(), "ref_text": "Other words", "seed": 2},
    {"text": "Fine.", "ref_audio": reference_wave(), "ref_text": REF_TEXT, "seed": 3, "speed": 0.5},
]


@pytest.fixture(scope="module")
def model():
    return AutoModel.from_pretrained(f5_dir(), dtype=torch.float32).eval()


def test_shared_solves_equal_each_request_alone(model):
    outputs = model.synthesize_batch(REQUESTS, batch_size=3, batch_frames=None, **{"dtype": torch.float32})
    for request, output in zip(REQUESTS, outputs):
        alone = model.synthesize(**request, nfe_step=None, dtype=torch.float32)
        assert output.chunks == alone.chunks
        assert output.audio.shape == alone.audio.shape
        np.testing.assert_allclose(output.audio, alone.audio, atol=2e-4, rtol=0)


def test_one_bad_request_does_not_lose_the_others(model):
    bad = {"text": " ", "ref_audio": reference_wave(), "ref_text": REF_TEXT}
    outputs = model.synthesize_batch([REQUESTS[0], bad, REQUESTS[2]], batch_size=2, errors="return", dtype="float32")
    assert isinstance(outputs[1], InputError) and "text to synthesize is empty" in str(outputs[1])
    assert outputs[0].audio.size > 0 and outputs[2].audio.size > 0
    with pytest.raises(InputError, match="text to synthesize is empty"):
        model.synthesize_batch([bad])
    with pytest.raises(InputError, match="unknown request key 'voice'"):
        model.synthesize_batch([{**REQUESTS[0], "voice": 1}])
    with pytest.raises(InputError, match="the request has no ref_text"):
        model.synthesize_batch([{"text": "Hi.", "ref_audio": reference_wave()}])
    with pytest.raises(InputError, match=r"batch_size must be in \[1, 65536\], got 0"):
        model.synthesize_batch(REQUESTS, batch_size=0)


def test_pipeline_over_a_list_of_requests_with_batch_size(model):
    pipe = pipeline("zero-shot-text-to-speech", model=str(f5_dir()), device="cpu")
    batched = pipe(REQUESTS, batch_size=2, **OPTIONS)
    assert len(batched) == 3 and all(item["sampling_rate"] == 24000 for item in batched)
    for request, item in zip(REQUESTS, batched):
        alone = pipe(request["text"], **{k: v for k, v in request.items() if k != "text"}, **OPTIONS)["audio"]
        np.testing.assert_allclose(item["audio"], alone, atol=2e-4, rtol=0)
    # texts sharing the keyword arguments' voice
    shared = pipe(["Hi there.", "Bye now."], batch_size=2, ref_audio=reference_wave(), ref_text=REF_TEXT, **OPTIONS)
    assert len(shared) == 2


@pytest.fixture()
def jobs(tmp_path):
    voices = tmp_path / "voices"
    voices.mkdir()
    soundfile.write(voices / "a.wav", reference_wave(), 24000)
    soundfile.write(voices / "b.wav", second_voice(), 24000)
    return tmp_path


def _batch(jobs_file, out_dir, *extra):
    args = ["synthesize", str(f5_dir()), "--batch", str(jobs_file), "--out-dir", str(out_dir)]
    return main([*args, "--nfe-step", "2", "--dtype", "float32", *extra])


def test_cli_batch_jsonl_writes_rows_reports_failures_and_resumes(jobs, capsys):
    rows = [
        {"id": "greeting", "text": "Hello there.", "ref_audio": "voices/a.wav", "ref_text": REF_TEXT, "seed": 1},
        {"text": "Second row.", "ref_audio": "voices/missing.wav", "ref_text": REF_TEXT},
        {"text": "Third row, slower.", "ref_audio": "voices/b.wav", "ref_text": "Other words", "speed": 0.8},
        {"text": "Bad speed.", "ref_audio": "voices/a.wav", "ref_text": REF_TEXT, "speed": 50},
    ]
    jobs_file = jobs / "jobs.jsonl"
    jobs_file.write_text("\n".join(json.dumps(row) for row in rows) + "\n\n", encoding="utf-8")
    out_dir = jobs / "out"
    assert _batch(jobs_file, out_dir) == 2  # some rows failed: exit 2 at the end, the others are written
    captured = capsys.readouterr()
    assert sorted(path.name for path in out_dir.iterdir()) == ["greeting.wav", "row2.wav"]
    errors = [line for line in captured.err.splitlines() if line.startswith("hf-tts synthesize: row")]
    assert len(errors) == 2
    assert errors[0].startswith("hf-tts synthesize: row 1: ") and "missing.wav" in errors[0]
    assert errors[1].startswith("hf-tts synthesize: row 3: ") and "speed must be in [0.1, 10]" in errors[1]
    assert "wrote 2 rows" in captured.out and "2 failed" in captured.out
    audio, rate = soundfile.read(out_dir / "greeting.wav")
    assert rate == 24000 and audio.size > 0
    # the row equals a one-text run with the same options
    single = jobs / "single.wav"
    args = ["synthesize", str(f5_dir()), "--text", "Hello there.", "--ref-audio", str(jobs / "voices/a.wav")]
    args += ["--ref-text", REF_TEXT, "--out", str(single), "--nfe-step", "2", "--seed", "1", "--dtype", "float32"]
    assert main(args) == 0
    np.testing.assert_allclose(soundfile.read(single)[0], audio, atol=2e-4)

    # resume: the written rows are skipped, the failed ones are tried again (row 1's voice is there now)
    stamp = (out_dir / "greeting.wav").stat().st_mtime_ns
    (jobs / "voices/missing.wav").hardlink_to(jobs / "voices/b.wav")
    assert _batch(jobs_file, out_dir) == 2
    captured = capsys.readouterr()
    assert "wrote 1 rows" in captured.out and "skipped 2 already written, 1 failed" in captured.out
    assert sorted(path.name for path in out_dir.iterdir()) == ["greeting.wav", "row1.wav", "row2.wav"]
    assert (out_dir / "greeting.wav").stat().st_mtime_ns == stamp


def test_cli_batch_csv_with_defaults_and_options(jobs, capsys):
    jobs_file = jobs / "jobs.csv"
    jobs_file.write_text(
        "id,text,seed,remove_silence,sway\nfirst,Hello there.,4,true,\nsecond,Another one.,,no,-0.5\n",
        encoding="utf-8",
    )
    out_dir = jobs / "out"
    extra = ["--ref-audio", str(jobs / "voices/a.wav"), "--ref-text", REF_TEXT]
    assert _batch(jobs_file, out_dir, *extra) == 0
    assert sorted(path.name for path in out_dir.iterdir()) == ["first.wav", "second.wav"]
    assert "wrote 2 rows" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        ("text,voice\nHi,a\n", "jobs.csv", "the header must name columns among"),
        ("", "jobs.jsonl", "has no rows"),
        ("text\n", "jobs.txt", "must be a .jsonl or .csv file"),
    ],
)
def test_cli_batch_bad_files_exit_2_before_any_work(jobs, capsys, content, name, message):
    jobs_file = jobs / name
    jobs_file.write_text(content, encoding="utf-8")
    assert _batch(jobs_file, jobs / "out") == 2
    assert message in capsys.readouterr().err
    assert not (jobs / "out").exists()


def test_cli_batch_row_problems_are_per_row(jobs, capsys):
    rows = ['{"id": "a", "text": "Hi.", "ref_audio": "voices/a.wav", "ref_text": "Words"}', "not json", "[1]"]
    rows += ['{"id": "a", "text": "Again.", "ref_audio": "voices/a.wav", "ref_text": "Words"}']
    rows += ['{"id": "../up", "text": "Hi.", "ref_audio": "voices/a.wav", "ref_text": "Words"}']
    rows += ['{"text": "Hi.", "ref_audio": "voices/a.wav"}']
    jobs_file = jobs / "jobs.jsonl"
    jobs_file.write_text("\n".join(rows), encoding="utf-8")
    assert _batch(jobs_file, jobs / "out") == 2
    err = capsys.readouterr().err
    assert "row 1: line 2 is not JSON" in err and "row 2: line 3 is not a JSON object" in err
    assert "id 'a' is also row 0's" in err and "id '../up' is not a safe file name" in err
    assert "row 5: ref_text is missing" in err
    assert sorted(path.name for path in (jobs / "out").iterdir()) == ["a.wav"]


def test_cli_batch_mode_refusals(jobs, capsys):
    jobs_file = jobs / "jobs.jsonl"
    jobs_file.write_text('{"text": "Hi."}\n', encoding="utf-8")
    base = ["synthesize", str(f5_dir()), "--batch", str(jobs_file)]
    assert main(base) == 2
    assert "--batch needs --out-dir" in capsys.readouterr().err
    assert main([*base, "--out-dir", str(jobs / "o"), "--out", str(jobs / "x.wav")]) == 2
    assert "--out does not apply to --batch" in capsys.readouterr().err
    assert main(["synthesize", str(f5_dir()), "--text", "Hi.", "--out", str(jobs / "x.wav")]) == 2
    assert "--ref-audio is required" in capsys.readouterr().err
