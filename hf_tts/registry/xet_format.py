"""The Xet wire formats and hashes (spec v1.1: hashing, xorb, shard, API hash strings), written from the
specification; `blake3` and `lz4` supply the primitives.

- chunk hash: blake3 keyed with `DATA_KEY` over the chunk's bytes;
- xorb hash: the root of Xet's merkle tree over (chunk hash, size) pairs: a level is cut into groups of 2 to 9 nodes
  (a group ends after a node whose hash is 0 mod 4, never before the third node), each group hashed as the text
  `"{hash} : {size}\\n"` per member with blake3 keyed by `INTERNAL_NODE_KEY`, until one node remains;
- file hash: that root, hashed again with an all-zero key;
- term verification hash: blake3 keyed by `VERIFICATION_KEY` over the raw chunk hashes of the term's range.

Hashes travel as strings with each 8-byte word byte-reversed (`hash_to_hex`). Nothing here touches the database or
HTTP: parsers take files or byte streams, check every length against its bounds, and raise `XetFormatError` (a
client error) on anything malformed.
"""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import blake3
import lz4.frame

DATA_KEY = bytes(
    [102, 151, 245, 119, 91, 149, 80, 222, 49, 53, 203, 172, 165, 151, 24, 28]
    + [157, 228, 33, 16, 155, 235, 43, 88, 180, 208, 176, 75, 147, 173, 242, 41]
)
INTERNAL_NODE_KEY = bytes(
    [1, 126, 197, 199, 165, 71, 41, 150, 253, 148, 102, 102, 180, 138, 2, 230]
    + [93, 221, 83, 111, 55, 199, 109, 210, 248, 99, 82, 230, 74, 83, 113, 63]
)
VERIFICATION_KEY = bytes(
    [127, 24, 87, 214, 206, 86, 237, 102, 18, 127, 249, 19, 231, 165, 195, 243]
    + [164, 205, 38, 213, 181, 219, 73, 230, 65, 36, 152, 127, 40, 251, 148, 195]
)
ZERO_KEY = bytes(32)
SHARD_TAG = b"HFRepoMetaData\x00" + bytes(
    [85, 105, 103, 69, 106, 123, 129, 87, 131, 165, 189, 217, 92, 205, 209, 74, 169]
)
SHARD_HEADER_VERSION = 2
SHARD_FOOTER_VERSION = 1
SHARD_FOOTER_SIZE = 200
BOOKEND = b"\xff" * 32 + bytes(16)
FLAG_VERIFICATION = 1 << 31
FLAG_METADATA_EXT = 1 << 30

MAX_CHUNK_BYTES = 128 << 10
MAX_XORB_BYTES = 64 << 20  # the spec's limit on a serialized xorb (chunks; the footer comes on top)
MAX_XORB_CHUNKS = 1 << 16
MAX_SHARD_ENTRIES = 1 << 22
CHUNK_HEADER = struct.Struct("<B3sB3s")
INDEX_ENTRY = struct.Struct("<32sII")  # chunk hash, byte offset of its header in the xorb, unpacked size
_HEX = re.compile(r"^[0-9a-f]{64}$")
_XORB_FOOTER_IDENT = b"XETBLOB"


class XetFormatError(ValueError):
    """Malformed or inconsistent Xet data sent by a client (answered 400)."""


# --- hashes -------------------------------------------------------------------------------------------------------------


def hash_to_hex(raw: bytes) -> str:
    """The API string of a hash: each 8-byte word as a little-endian u64 in 16 hex digits."""
    return "".join(raw[i : i + 8][::-1].hex() for i in range(0, 32, 8))


def hex_to_hash(text: str) -> bytes:
    if not isinstance(text, str) or not _HEX.fullmatch(text):
        raise XetFormatError(f"{text!r} is not a Xet hash (64 lowercase hex digits)")
    return b"".join(bytes.fromhex(text[i : i + 16])[::-1] for i in range(0, 64, 16))


def chunk_hash(data: bytes) -> bytes:
    return blake3.blake3(data, key=DATA_KEY).digest()


def _word3(raw: bytes) -> int:
    return int.from_bytes(raw[24:32], "little")


def dedupe_eligible(raw: bytes) -> bool:
    """Chunks the client may ask the global dedupe API about (besides each file's first chunk)."""
    return _word3(raw) % 1024 == 0


def merkle_root(nodes: list[tuple[bytes, int]]) -> bytes:
    """The aggregated hash of (hash, size) pairs (the xorb hash of a xorb's chunks). Empty -> all zeros."""
    if not nodes:
        return bytes(32)
    level = nodes
    while len(level) > 1:
        merged: list[tuple[bytes, int]] = []
        start = 0
        while start < len(level):
            remaining = len(level) - start
            cut = remaining
            if remaining > 2:
                cut = min(9, remaining)
                for offset in range(2, min(9, remaining)):
                    if _word3(level[start + offset][0]) % 4 == 0:
                        cut = offset + 1
                        break
            group = level[start : start + cut]
            text = "".join(f"{hash_to_hex(node)} : {size}\n" for node, size in group)
            merged.append(
                (blake3.blake3(text.encode(), key=INTERNAL_NODE_KEY).digest(), sum(size for _, size in group))
            )
            start += cut
        level = merged
    return level[0][0]


def file_hash(nodes: list[tuple[bytes, int]]) -> bytes:
    if not nodes:
        return bytes(32)
    return blake3.blake3(merkle_root(nodes), key=ZERO_KEY).digest()


def verification_hash(hashes: Iterable[bytes]) -> bytes:
    return blake3.blake3(b"".join(hashes), key=VERIFICATION_KEY).digest()


def hmac_hash(raw: bytes, key: bytes) -> bytes:
    return blake3.blake3(raw, key=key).digest()


# --- chunks and xorbs --------------------------------------------------------------------------------------------------


def _ungroup4(grouped: bytes) -> bytes:
    """Undo byte grouping: group i holds every 4th byte starting at i (the first n % 4 groups one byte longer)."""
    size = len(grouped)
    base, extra = divmod(size, 4)
    out = bytearray(size)
    position = 0
    for group in range(4):
        length = base + (1 if group < extra else 0)
        out[group::4] = grouped[position : position + length]
        position += length
    return bytes(out)


def decode_chunk(scheme: int, payload: bytes | memoryview, size: int) -> bytes | memoryview:
    """A chunk's bytes from its stored form (0 none, 1 LZ4 frame, 2 byte-grouped LZ4 frame), length-checked."""
    if scheme == 0:
        data = payload
    elif scheme in (1, 2):
        decompressor = lz4.frame.LZ4FrameDecompressor()
        try:
            data = decompressor.decompress(payload, max_length=size + 1)
        except RuntimeError as error:
            raise XetFormatError(f"chunk does not decompress as LZ4: {error}") from error
        if scheme == 2:
            data = _ungroup4(data)
    else:
        raise XetFormatError(f"unknown chunk compression scheme {scheme}")
    if len(data) != size:
        raise XetFormatError(f"chunk decodes to {len(data)} bytes, its header says {size}")
    return data


def read_chunk_header(header: bytes | memoryview) -> tuple[int, int, int]:
    """(compressed size, scheme, uncompressed size) of an 8-byte chunk header."""
    version, packed, scheme, unpacked = CHUNK_HEADER.unpack(header)
    if version != 0:
        raise XetFormatError(f"chunk header version {version} (expected 0)")
    compressed_size = int.from_bytes(packed, "little")
    size = int.from_bytes(unpacked, "little")
    if size == 0 or size > MAX_CHUNK_BYTES:
        raise XetFormatError(f"chunk of {size} bytes (chunks hold 1 to {MAX_CHUNK_BYTES} bytes)")
    return compressed_size, scheme, size


@dataclass(frozen=True)
class XorbIndex:
    """Where each chunk of a stored xorb lies: hashes, header offsets, unpacked sizes, and the end of the chunks."""

    hashes: tuple[bytes, ...]
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    data_end: int

    @property
    def unpacked_bytes(self) -> int:
        return sum(self.sizes)

    def byte_end(self, index: int) -> int:
        """The offset just past chunk `index` (its successor's header, or the end of the chunk data)."""
        return self.offsets[index + 1] if index + 1 < len(self.offsets) else self.data_end

    def to_bytes(self) -> bytes:
        body = b"".join(INDEX_ENTRY.pack(h, o, s) for h, o, s in zip(self.hashes, self.offsets, self.sizes))
        return struct.pack("<I", self.data_end) + body

    @classmethod
    def from_bytes(cls, data: bytes) -> XorbIndex:
        (data_end,) = struct.unpack_from("<I", data)
        rows = list(INDEX_ENTRY.iter_unpack(data[4:]))
        return cls(tuple(r[0] for r in rows), tuple(r[1] for r in rows), tuple(r[2] for r in rows), data_end)


_MAX_XORB_FOOTER = MAX_XORB_BYTES // 8  # bytes kept of a xorb's info footer (hashes and offsets per chunk)


class XorbReader:
    """Parses a xorb while its bytes arrive (`feed`, any split), decoding and hashing every chunk as soon as it is
    complete, so an upload is verified as it streams to disk and never read back; `finish` checks the xorb hash and
    returns the chunk index. Memory: one compressed chunk (raw chunks are hashed straight from the pieces) and an
    info footer, if the xorb carries one.

    A serialized xorb may end with an info footer (`XETBLOB`..., its length in the last 4 bytes): it starts at a chunk
    boundary, and is accepted only when that length points back at it."""

    def __init__(self, expected_hash: bytes):
        self.expected_hash = expected_hash
        self.hashes: list[bytes] = []
        self.offsets: list[int] = []
        self.sizes: list[int] = []
        self._position = 0  # bytes consumed so far
        self._header = bytearray()
        self._chunk: tuple[int, int, int] | None = None  # (remaining payload bytes, scheme, unpacked size)
        self._raw_hasher: blake3.blake3 | None = None
        self._payload = bytearray()
        self._footer: bytearray | None = None
        self._footer_start = 0

    def feed(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            if self._footer is not None:
                if len(self._footer) + len(view) > _MAX_XORB_FOOTER:
                    raise XetFormatError(f"xorb footer is larger than {_MAX_XORB_FOOTER} bytes")
                self._footer += view
                self._position += len(view)
                return
            if self._chunk is None:
                view = self._read_header(view)
            else:
                view = self._read_payload(view)

    def _read_header(self, view: memoryview) -> memoryview:
        if not self._header and view[0] == _XORB_FOOTER_IDENT[0]:
            self._footer = bytearray()
            self._footer_start = self._position
            return view
        take = min(CHUNK_HEADER.size - len(self._header), len(view))
        self._header += view[:take]
        self._position += take
        if len(self._header) == CHUNK_HEADER.size:
            compressed_size, scheme, size = read_chunk_header(self._header)
            if self._position + compressed_size > MAX_XORB_BYTES + (1 << 20):
                # ~64 MiB of data plus its chunk headers (hf_xet fills xorbs to 64 MiB)
                raise XetFormatError(f"xorb chunks take more than {MAX_XORB_BYTES + (1 << 20)} bytes")
            if len(self.hashes) >= MAX_XORB_CHUNKS:
                raise XetFormatError(f"xorb holds more than {MAX_XORB_CHUNKS} chunks")
            self.offsets.append(self._position - CHUNK_HEADER.size)
            self._header.clear()
            self._chunk = (compressed_size, scheme, size)
            if scheme == 0 and compressed_size == size:
                self._raw_hasher = blake3.blake3(key=DATA_KEY)
            if compressed_size == 0:
                self._end_chunk()
        return view[take:]

    def _read_payload(self, view: memoryview) -> memoryview:
        remaining, scheme, size = self._chunk
        take = min(remaining, len(view))
        if self._raw_hasher is not None:
            self._raw_hasher.update(view[:take])
        else:
            self._payload += view[:take]
        self._position += take
        self._chunk = (remaining - take, scheme, size)
        if take == remaining:
            self._end_chunk()
        return view[take:]

    def _end_chunk(self) -> None:
        _, scheme, size = self._chunk
        if self._raw_hasher is not None:
            self.hashes.append(self._raw_hasher.digest())
            self._raw_hasher = None
        else:
            self.hashes.append(chunk_hash(decode_chunk(scheme, bytes(self._payload), size)))
            self._payload.clear()
        self.sizes.append(size)
        self._chunk = None

    def finish(self) -> XorbIndex:
        """The index of the whole xorb, once every byte was fed; raises if it is cut short or its hash differs."""
        if self._header or self._chunk is not None:
            raise XetFormatError(f"xorb ends inside a chunk at byte {self._position}")
        if self._footer is not None:
            footer = self._footer
            intact = footer.startswith(_XORB_FOOTER_IDENT) and len(footer) >= len(_XORB_FOOTER_IDENT) + 4
            if not intact or struct.unpack_from("<I", footer, len(footer) - 4)[0] != len(footer) - 4:
                raise XetFormatError(
                    f"xorb holds bytes that are neither a chunk nor its footer at {self._footer_start}"
                )
        if not self.hashes:
            raise XetFormatError("xorb holds no chunks")
        actual = merkle_root(list(zip(self.hashes, self.sizes)))
        if actual != self.expected_hash:
            raise XetFormatError(
                f"xorb hash mismatch: the chunks hash to {hash_to_hex(actual)}, "
                f"the upload names {hash_to_hex(self.expected_hash)}"
            )
        end = self._footer_start if self._footer is not None else self._position
        return XorbIndex(tuple(self.hashes), tuple(self.offsets), tuple(self.sizes), end)


READ_BLOCK = 4 << 20  # bytes of a stored xorb read at a time when its chunks are decoded


def chunk_blocks(index: XorbIndex, start: int, end: int) -> Iterator[tuple[int, int]]:
    """The chunks [start, end) of a stored xorb in read blocks of about `READ_BLOCK` bytes: (first, end) chunk
    numbers of each block (a block holds at least one chunk). Its bytes are [offsets[first], byte_end(end - 1))."""
    chunk = start
    while chunk < end:
        last = chunk + 1
        while last < end and index.byte_end(last) - index.offsets[chunk] <= READ_BLOCK:
            last += 1
        yield chunk, last
        chunk = last


def decode_block(block: memoryview, count: int) -> Iterator[bytes | memoryview]:
    """The decoded chunks of a read block holding `count` whole chunks. Uncompressed chunks come as views into the
    block (no copy), valid while the block is."""
    position = 0
    for _ in range(count):
        compressed_size, scheme, size = read_chunk_header(block[position : position + CHUNK_HEADER.size])
        payload = block[position + CHUNK_HEADER.size : position + CHUNK_HEADER.size + compressed_size]
        yield payload if scheme == 0 and len(payload) == size else decode_chunk(scheme, payload, size)
        position += CHUNK_HEADER.size + compressed_size


def iter_chunks(stream: BinaryIO, index: XorbIndex, start: int, end: int) -> Iterator[bytes | memoryview]:
    """The decoded chunks [start, end) of a stored (already verified) xorb, read from `stream` block by block."""
    for first, last in chunk_blocks(index, start, end):
        stream.seek(index.offsets[first])
        yield from decode_block(memoryview(stream.read(index.byte_end(last - 1) - index.offsets[first])), last - first)


# --- shards -----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Term:
    xorb: bytes
    start: int
    end: int
    unpacked: int


@dataclass(frozen=True)
class FileInfo:
    file_hash: bytes
    terms: tuple[Term, ...]
    verification: tuple[bytes, ...]
    sha256: bytes | None


@dataclass(frozen=True)
class CasInfo:
    xorb: bytes
    num_chunks: int


def _read_exact(stream: BinaryIO, size: int, what: str) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise XetFormatError(f"shard ends inside {what}")
    return data


def parse_shard(stream: BinaryIO) -> tuple[list[FileInfo], list[CasInfo]]:
    """The file reconstructions and xorb listings of an uploaded shard (footer, if any, ignored)."""
    tag, version, _footer_size = struct.unpack("<32sQQ", _read_exact(stream, 48, "the header"))
    if tag != SHARD_TAG:
        raise XetFormatError("not a Xet shard (wrong magic tag)")
    if version != SHARD_HEADER_VERSION:
        raise XetFormatError(f"shard header version {version} (expected {SHARD_HEADER_VERSION})")
    files: list[FileInfo] = []
    entries = 0
    while True:
        block = _read_exact(stream, 48, "a file info header")
        if block == BOOKEND:
            break
        file_hash_raw, flags, count = struct.unpack_from("<32sII", block)
        entries += count
        if count == 0 or entries > MAX_SHARD_ENTRIES:
            raise XetFormatError(f"file info {hash_to_hex(file_hash_raw)} has {count} terms")
        terms = []
        for _ in range(count):
            xorb, _flags, unpacked, start, end = struct.unpack("<32sIIII", _read_exact(stream, 48, "a file term"))
            if end <= start:
                raise XetFormatError(f"term of xorb {hash_to_hex(xorb)} has an empty chunk range [{start}, {end})")
            terms.append(Term(xorb, start, end, unpacked))
        verification: list[bytes] = []
        if flags & FLAG_VERIFICATION:
            verification = [_read_exact(stream, 48, "a verification entry")[:32] for _ in range(count)]
        sha256 = _read_exact(stream, 48, "the metadata extension")[:32] if flags & FLAG_METADATA_EXT else None
        files.append(FileInfo(file_hash_raw, tuple(terms), tuple(verification), sha256))
    cas: list[CasInfo] = []
    while True:
        block = _read_exact(stream, 48, "a xorb info header")
        if block == BOOKEND:
            break
        xorb, _flags, count, _bytes_in_cas, _bytes_on_disk = struct.unpack("<32sIIII", block)
        entries += count
        if entries > MAX_SHARD_ENTRIES:
            raise XetFormatError("shard lists too many chunks")
        _read_exact(stream, 48 * count, "a xorb's chunk list")
        cas.append(CasInfo(xorb, count))
    return files, cas


def dedupe_shard(xorbs: list[tuple[bytes, XorbIndex, int]], key: bytes, expiry_seconds: int = 7 * 86400) -> bytes:
    """A global-dedupe answer: a shard with no files and the given xorbs (hash, index, stored size), every chunk hash
    keyed-hashed with `key` (so only a client that holds a chunk learns it is here), with a footer carrying the key."""
    parts = [struct.pack("<32sQQ", SHARD_TAG, SHARD_HEADER_VERSION, SHARD_FOOTER_SIZE), BOOKEND]
    cas_offset = 48 + len(BOOKEND)
    for xorb, index, stored_size in xorbs:
        parts.append(struct.pack("<32sIIII", xorb, 0, len(index.hashes), index.unpacked_bytes, stored_size))
        for chunk, offset, size in zip(index.hashes, index.offsets, index.sizes):
            parts.append(struct.pack("<32sII8x", hmac_hash(chunk, key), offset, size))
    parts.append(BOOKEND)
    footer_offset = sum(len(part) for part in parts)
    now = int(time.time())
    footer = struct.pack(
        "<QQQ48x32sQQ72xQ", SHARD_FOOTER_VERSION, 48, cas_offset, key, now, now + expiry_seconds, footer_offset
    )
    return b"".join(parts) + footer
