"""Property tests of the strict readers: safetensors headers (agreeing with safetensors itself on what is valid) and
YAML documents. Every input gives a result or an InputError, never another exception."""

from __future__ import annotations

import contextlib
import json
import struct

from hypothesis import given
from hypothesis import strategies as st
from safetensors import SafetensorError, safe_open

from hf_tts.errors import InputError
from hf_tts.file_utils import SAFETENSORS_ITEMSIZE, load_yaml, read_safetensors_header
from tests.fuzz import FUZZ

_dims = st.lists(st.integers(0, 4), max_size=3)
_entry = st.fixed_dictionaries(
    {"dtype": st.sampled_from([*SAFETENSORS_ITEMSIZE, "F128", 5]), "shape": _dims | st.just("x")},
)


@st.composite
def _headers(draw):
    """Mostly-plausible headers: tensors laid out in order, then sometimes damaged (offset shifts, duplicates via
    raw text, extra bytes, metadata of the wrong type)."""
    entries = draw(st.dictionaries(st.text("abc.", min_size=1, max_size=4), _entry, max_size=4))
    header, position = {}, 0
    for key, entry in entries.items():
        size = SAFETENSORS_ITEMSIZE.get(entry["dtype"], 4)
        if isinstance(entry["shape"], list):
            for dim in entry["shape"]:
                size *= dim
        shift = draw(st.sampled_from([0, 0, 0, -1, 1]))
        header[key] = {**entry, "data_offsets": [max(0, position + shift), position + size]}
        position += size
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.sampled_from([{"format": "pt"}, {"k": 1}, [1], "x"]))
    raw = json.dumps(header).encode()
    if header and draw(st.integers(0, 5)) == 0:
        first = next(iter(header))
        raw = raw[:-1] + b", " + json.dumps(first).encode() + b": " + json.dumps(header[first]).encode() + b"}"
    extra = draw(st.sampled_from([0, 0, 0, 1, -1]))
    return raw, b"\0" * max(0, position + extra)


@FUZZ
@given(_headers())
def test_header_reader_agrees_with_safetensors(tmp_path_factory, case):
    raw, data = case
    path = tmp_path_factory.mktemp("fuzz") / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    try:
        header, _ = read_safetensors_header(path)
        ours = set(header) - {"__metadata__"}
    except InputError:
        ours = None
    try:
        with safe_open(path, "np") as handle:
            theirs = set(handle.keys())
    except (SafetensorError, TypeError, ValueError):
        theirs = None
    # What we accept, safetensors accepts with the same tensors. (We are stricter only about dtypes numpy cannot
    # hold and duplicate keys, which safetensors' JSON parser resolves by keeping the last one.)
    if ours is not None:
        assert theirs == ours


@FUZZ
@given(st.binary(max_size=300))
def test_header_reader_on_random_bytes(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("fuzz") / "x.safetensors"
    path.write_bytes(blob)
    with contextlib.suppress(InputError):
        read_safetensors_header(path)


@FUZZ
@given(st.text(max_size=400) | st.binary(max_size=400))
def test_yaml_loader_gives_data_or_input_error(text):
    try:
        value = load_yaml(text, "fuzz.yaml")
    except InputError as error:
        assert str(error).startswith("fuzz.yaml")
        return
    json.dumps(value, default=str)  # plain data only: no custom objects came out
