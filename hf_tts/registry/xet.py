"""The Xet CAS side of the registry (spec v1.1), without HTTP: short-lived repo-scoped tokens, xorbs verified
against their hash before they are kept, shards parsed and checked (every xorb exists, every term's verification
hash and the file hash match, the file's sha256 matches its rebuilt bytes) before their files are registered, the
global dedupe query, reconstructions, and the bytes of a Xet file rebuilt from its xorbs.

On disk: `ROOT/xorbs/<hash[:2]>/<hash>` (as received, placed by rename once verified). In the database: `xorbs`
(with each xorb's chunk index), `xet_files` (reconstruction terms), `dedupe_chunks` and, per repo, `repo_objects`
(the contents a repo may commit). Chunks are shared by every file and repo, so a fine-tune that reuses most of a
base model's bytes stores (and uploads) only the chunks that changed.

Tokens are `xet_<repo>.<scope>.<expiry>.<hmac>` signed with the registry's secret (in the database, so every
process accepts every other's tokens); download URLs of xorb ranges are signed the same way, so they need no token.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from hf_tts.registry import schema as db
from hf_tts.registry.blobs import read_ranges_around_cache
from hf_tts.registry.errors import RegistryError
from hf_tts.registry.store import LRU, Store
from hf_tts.registry.xet_format import (
    Term,
    XetFormatError,
    XorbIndex,
    XorbReader,
    chunk_blocks,
    decode_block,
    dedupe_eligible,
    dedupe_shard,
    file_hash,
    hash_to_hex,
    hex_to_hash,
    iter_chunks,
    parse_shard,
    verification_hash,
)

SCOPES = ("read", "write")
DEFAULT_TOKEN_TTL = 900.0
URL_TTL = 3600


def sign(secret: bytes, text: str) -> str:
    return hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class XetGrant:
    repo_pk: int
    scope: str
    expires: int


@dataclass(frozen=True)
class XetFile:
    hash: str
    size: int
    sha256: str
    terms: tuple[Term, ...]


def _client_error(error: XetFormatError) -> RegistryError:
    return RegistryError(400, str(error))


class XetCas:
    def __init__(self, store: Store, token_ttl: float = DEFAULT_TOKEN_TTL):
        self.store = store
        self.token_ttl = token_ttl
        self.root = store.root / "xorbs"
        self.root.mkdir(exist_ok=True)
        self._indexes = LRU(512)  # xorb hash -> (XorbIndex, stored size); xorbs never change once accepted
        self._files = LRU(256)

    @property
    def secret(self) -> bytes:
        return self.store.signing_secret

    # --- tokens -----------------------------------------------------------------------------------------------------

    def issue_token(self, repo_pk: int, scope: str) -> tuple[str, int]:
        expires = int(time.time() + self.token_ttl)
        payload = f"{repo_pk}.{scope}.{expires}"
        return f"xet_{payload}.{sign(self.secret, payload)}", expires

    def check_token(self, token: str | None, need: str, repo_pk: int | None = None) -> XetGrant:
        """The grant of a CAS request's bearer token: 401 when missing, forged or expired; 403 when it is a read
        token used to write, or a token of another repo."""
        if not token or not token.startswith("xet_"):
            raise RegistryError(401, "the CAS needs a Xet token: ask the registry's xet-read-token/xet-write-token")
        payload, _, signature = token[4:].rpartition(".")
        parts = payload.split(".")
        if len(parts) != 3 or not hmac.compare_digest(signature, sign(self.secret, payload)):
            raise RegistryError(401, "invalid Xet token: ask the registry for a new one")
        repo_text, scope, expires_text = parts
        grant = XetGrant(int(repo_text), scope, int(expires_text))
        if grant.expires <= time.time():
            raise RegistryError(
                401, f"Xet token expired at {grant.expires} (unix time): ask the registry for a new one"
            )
        if need == "write" and grant.scope != "write":
            raise RegistryError(403, "this Xet token is read-only: uploads need one from xet-write-token")
        if repo_pk is not None and grant.repo_pk != repo_pk:
            raise RegistryError(403, "this Xet token was issued for another repository")
        return grant

    def signed_query(self, *parts: object) -> str:
        expires = int(time.time()) + URL_TTL
        text = "/".join(str(part) for part in (*parts, expires))
        return f"exp={expires}&sig={sign(self.secret, text)}"

    def check_signed(self, expires: str | None, signature: str | None, *parts: object) -> None:
        if not expires or not signature or not expires.isdigit():
            raise RegistryError(403, "this URL is not signed: ask the registry for a fresh one")
        text = "/".join(str(part) for part in (*parts, expires))
        if not hmac.compare_digest(signature, sign(self.secret, text)):
            raise RegistryError(403, "this URL's signature does not match: ask the registry for a fresh one")
        if int(expires) <= time.time():
            raise RegistryError(403, "this URL has expired: ask the registry for a fresh one")

    # --- xorbs ------------------------------------------------------------------------------------------------------

    def xorb_path(self, xorb_hex: str) -> Path:
        return self.root / xorb_hex[:2] / xorb_hex

    def has_xorb(self, xorb_hex: str) -> bool:
        return self.xorb(xorb_hex) is not None

    def xorb(self, xorb_hex: str) -> tuple[XorbIndex, int] | None:
        cached = self._indexes.get(xorb_hex)
        if cached is not None:
            return cached
        with self.store.read() as conn:
            row = conn.execute(
                select(db.xorbs.c.chunk_index, db.xorbs.c.size).where(db.xorbs.c.hash == xorb_hex)
            ).first()
        if row is None:
            return None
        found = (XorbIndex.from_bytes(row.chunk_index), int(row.size))
        self._indexes.put(xorb_hex, found)
        return found

    def put_xorb(self, staged: Path, reader: XorbReader) -> bool:
        """Accept a received xorb file (moved into the store; the caller removes it when the xorb was already here):
        `reader`, the `XorbReader` its bytes streamed through as they arrived, must find that its chunks hash to the
        hash it was made for, the xorb's name. Returns whether it was new."""
        xorb_hex = hash_to_hex(reader.expected_hash)
        try:
            if self.has_xorb(xorb_hex):
                with self.store.write() as conn:  # a re-upload keeps it young for gc, until its shard arrives
                    conn.execute(update(db.xorbs).where(db.xorbs.c.hash == xorb_hex).values(created_at=time.time()))
                return False
            index = reader.finish()
        except XetFormatError as error:
            raise _client_error(error) from error
        target = self.xorb_path(xorb_hex)
        target.parent.mkdir(exist_ok=True)
        # Before the row, so a row always has its file; a concurrent upload of the same xorb renames identical bytes.
        os.replace(staged, target)
        dedupe = {hash_to_hex(chunk) for chunk in index.hashes if dedupe_eligible(chunk)}
        dedupe.add(hash_to_hex(index.hashes[0]))
        try:
            with self.store.write() as conn:
                conn.execute(
                    insert(db.xorbs).values(
                        hash=xorb_hex,
                        size=target.stat().st_size,
                        num_chunks=len(index.hashes),
                        chunk_index=index.to_bytes(),
                        created_at=time.time(),
                    )
                )
                self._add_dedupe(conn, dedupe, xorb_hex)
        except IntegrityError:
            return False  # accepted concurrently by another request or process
        return True

    def _add_dedupe(self, conn, chunk_hexes: set[str], xorb_hex: str) -> None:  # noqa: ANN001
        known = {
            row[0]
            for row in conn.execute(
                select(db.dedupe_chunks.c.chunk_hash).where(db.dedupe_chunks.c.chunk_hash.in_(sorted(chunk_hexes)))
            )
        }
        rows = [{"chunk_hash": chunk, "xorb_hash": xorb_hex} for chunk in sorted(chunk_hexes - known)]
        if rows:
            conn.execute(insert(db.dedupe_chunks), rows)

    # --- shards -----------------------------------------------------------------------------------------------------

    def put_shard(self, staged: Path, repo_pk: int) -> int:
        """Register the files of an uploaded shard for the repo after checking them; returns how many."""
        try:
            with open(staged, "rb", buffering=1 << 20) as stream:
                files, listed = parse_shard(stream)
        except XetFormatError as error:
            raise _client_error(error) from error
        for item in listed:
            if not self.has_xorb(hash_to_hex(item.xorb)):
                raise RegistryError(
                    400, f"shard lists xorb {hash_to_hex(item.xorb)}, which was never uploaded: upload xorbs first"
                )
        registered: list[XetFile] = []
        for info in files:
            name = hash_to_hex(info.file_hash)
            if len(info.verification) != len(info.terms) or info.sha256 is None:
                raise RegistryError(400, f"shard file {name} lacks verification entries or its sha256 extension")
            chunks: list[tuple[bytes, int]] = []
            for term, expected in zip(info.terms, info.verification):
                xorb_hex = hash_to_hex(term.xorb)
                found = self.xorb(xorb_hex)
                if found is None:
                    raise RegistryError(400, f"shard file {name} references xorb {xorb_hex}, which was never uploaded")
                index = found[0]
                if term.end > len(index.hashes):
                    raise RegistryError(
                        400, f"shard file {name}: chunks [{term.start}, {term.end}) are outside xorb {xorb_hex}"
                    )
                sizes = index.sizes[term.start : term.end]
                if sum(sizes) != term.unpacked:
                    raise RegistryError(
                        400,
                        f"shard file {name}: a term of xorb {xorb_hex} says {term.unpacked} bytes, not {sum(sizes)}",
                    )
                hashes = index.hashes[term.start : term.end]
                if verification_hash(hashes) != expected:
                    raise RegistryError(400, f"shard file {name}: verification hash mismatch for xorb {xorb_hex}")
                chunks.extend(zip(hashes, sizes))
            if file_hash(chunks) != info.file_hash:
                raise RegistryError(400, f"shard file {name}: its chunks do not hash to the file hash")
            # The sha256 travels like every Xet hash (8-byte words byte-reversed).
            item = XetFile(name, sum(size for _, size in chunks), hash_to_hex(info.sha256), info.terms)
            known = self.file(name)
            if known is None:
                actual = self.file_sha256(item)
            else:  # its bytes were hashed when it was first registered (a re-push): the chunks pin the same bytes
                actual = known.sha256
            if actual != item.sha256:
                raise RegistryError(
                    400, f"shard file {name}: its bytes have sha256 {actual}, the shard says {item.sha256}"
                )
            registered.append(item)
        with self.store.write() as conn:
            for item in registered:
                exists = conn.execute(select(db.xet_files.c.hash).where(db.xet_files.c.hash == item.hash)).first()
                if exists is None:
                    terms = [[hash_to_hex(t.xorb), t.start, t.end, t.unpacked] for t in item.terms]
                    conn.execute(
                        insert(db.xet_files).values(
                            hash=item.hash,
                            size=item.size,
                            sha256=item.sha256,
                            terms=json.dumps(terms),
                            created_at=time.time(),
                        )
                    )
                self.store.link_large_file(conn, repo_pk, item.sha256, item.size, item.hash)
        return len(registered)

    # --- dedupe and reading ---------------------------------------------------------------------------------------------

    def dedupe_answer(self, chunk_hex: str) -> bytes | None:
        """The global dedupe answer for a chunk: a shard describing the xorb holding it, or None."""
        try:
            hex_to_hash(chunk_hex)
        except XetFormatError as error:
            raise _client_error(error) from error
        with self.store.read() as conn:
            xorb_hex = conn.execute(
                select(db.dedupe_chunks.c.xorb_hash).where(db.dedupe_chunks.c.chunk_hash == chunk_hex)
            ).scalar()
        found = self.xorb(xorb_hex) if xorb_hex else None
        if found is None:
            return None
        return dedupe_shard([(hex_to_hash(xorb_hex), found[0], found[1])], secrets.token_bytes(32))

    def file(self, xet_hash: str) -> XetFile | None:
        cached = self._files.get(xet_hash)
        if cached is not None:
            return cached
        with self.store.read() as conn:
            row = conn.execute(select(db.xet_files).where(db.xet_files.c.hash == xet_hash)).first()
        if row is None:
            return None
        terms = tuple(Term(hex_to_hash(x), s, e, u) for x, s, e, u in json.loads(row.terms))
        item = XetFile(row.hash, int(row.size), row.sha256, terms)
        self._files.put(xet_hash, item)
        return item

    def file_in_repo(self, repo_pk: int, xet_hash: str) -> XetFile | None:
        with self.store.read() as conn:
            linked = conn.execute(
                select(db.repo_objects.c.sha256).where(
                    db.repo_objects.c.repo_id == repo_pk, db.repo_objects.c.xet_hash == xet_hash
                )
            ).first()
        return self.file(xet_hash) if linked is not None else None

    def _spans(self, item: XetFile, start: int, end: int) -> Iterator[tuple[str, XorbIndex, int, int, int]]:
        """For the bytes [start, end) of a file: (xorb, index, first chunk, end chunk, bytes to skip in the first)."""
        position = 0
        for term in item.terms:
            if position >= end:
                return
            term_end = position + term.unpacked
            if term_end <= start:
                position = term_end
                continue
            xorb_hex = hash_to_hex(term.xorb)
            found = self.xorb(xorb_hex)
            if found is None:
                raise RuntimeError(f"xorb {xorb_hex} of Xet file {item.hash} is missing from the database")
            index = found[0]
            first, skip = term.start, 0
            chunk_start = position
            while chunk_start + index.sizes[first] <= start:
                chunk_start += index.sizes[first]
                first += 1
            skip = max(start - chunk_start, 0)
            last, offset = first, chunk_start
            while last < term.end and offset < end:
                offset += index.sizes[last]
                last += 1
            yield xorb_hex, index, first, last, skip
            position = term_end

    def _iter_views(self, item: XetFile, start: int, length: int) -> Iterator[bytes | memoryview]:
        """The bytes [start, start + length) of a Xet file as decoded chunk pieces (views where no copy is needed)."""
        remaining = length
        for xorb_hex, index, first, last, skip in self._spans(item, start, start + length):
            with open(self.xorb_path(xorb_hex), "rb", buffering=0) as stream:
                for data in iter_chunks(stream, index, first, last):
                    if skip:
                        data, skip = data[skip:], 0
                    data = data[:remaining]
                    remaining -= len(data)
                    yield data
                    if remaining <= 0:
                        break
            if remaining <= 0:
                break
        if remaining > 0:
            raise RuntimeError(f"Xet file {item.hash} rebuilt {length - remaining} of {length} bytes")

    def iter_bytes(self, item: XetFile, start: int, length: int, piece: int = 1 << 20) -> Iterator[bytes]:
        """The bytes [start, start + length) of a Xet file, decoded from its xorbs in pieces of about `piece`."""
        buffer = bytearray()
        for data in self._iter_views(item, start, length):
            buffer += data
            if len(buffer) >= piece:
                yield bytes(buffer)
                buffer.clear()
        if buffer:
            yield bytes(buffer)

    def file_sha256(self, item: XetFile) -> str:
        """The sha256 of a Xet file's bytes, rebuilt from its xorbs. They are read around the page cache, as they
        were written, a few blocks ahead of the hashing (`read_ranges_around_cache`)."""
        digest = hashlib.sha256()
        blocks = [
            (xorb_hex, index, first, last)
            for xorb_hex, index, span_first, span_end, _ in self._spans(item, 0, item.size)
            for first, last in chunk_blocks(index, span_first, span_end)
        ]
        ranges = (
            (self.xorb_path(xorb), index.offsets[first], index.byte_end(last - 1))
            for xorb, index, first, last in blocks
        )
        with closing(read_ranges_around_cache(ranges)) as views:
            for (_, _, first, last), view in zip(blocks, views):
                for data in decode_block(view, last - first):
                    digest.update(data)
        return digest.hexdigest()

    def reconstruction(self, item: XetFile, start: int, end: int, xorb_url: str) -> dict:
        """The v1 reconstruction of bytes [start, end] of a file: chunk-aligned terms, the offset into the first,
        and for each term a signed URL with the byte range of its chunks in the xorb."""
        terms, fetch_info = [], {}
        offset_into_first = None
        for xorb_hex, index, first, last, skip in self._spans(item, start, end + 1):
            if offset_into_first is None:
                offset_into_first = skip
            byte_start, byte_end = index.offsets[first], index.byte_end(last - 1) - 1
            terms.append(
                {
                    "hash": xorb_hex,
                    "unpacked_length": sum(index.sizes[first:last]),
                    "range": {"start": first, "end": last},
                }
            )
            query = self.signed_query(xorb_hex, byte_start, byte_end)
            fetch_info.setdefault(xorb_hex, []).append(
                {
                    "range": {"start": first, "end": last},
                    "url": f"{xorb_url}/{xorb_hex}?start={byte_start}&end={byte_end}&{query}",
                    "url_range": {"start": byte_start, "end": byte_end},
                }
            )
        return {"offset_into_first_range": offset_into_first or 0, "terms": terms, "fetch_info": fetch_info}


__all__ = ["SCOPES", "XetCas", "XetFile", "XetGrant", "sign"]
