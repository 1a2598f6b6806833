"""The registry's storage: repos, git-like commits and trees, refs, in a SQL database; file bodies in `BlobStore`.

Nothing here knows HTTP. Every change is one database transaction; refs move by compare-and-swap on their previous
target (`UPDATE refs SET commit_id = new WHERE ... AND commit_id = old`), so any number of processes on one SQLite
root or one PostgreSQL database never lose a commit: a writer that lost the race re-applies its operations on the
new head (or answers 412 when the client pinned `parentCommit`). There are no in-process locks.

Commits and trees are immutable once written, so this process caches them (trees, single entries, commit rows);
refs and repo settings are read from the database on every call.
"""

from __future__ import annotations

import bisect
import datetime as _dt
import hashlib
import json
import os
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, and_, bindparam, delete, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from hf_tts.registry import schema as db
from hf_tts.registry.blobs import BlobStore
from hf_tts.registry.cards import read_card
from hf_tts.registry.commit_stream import CommitRequest, Operation
from hf_tts.registry.errors import (
    RegistryError,
    looks_like_commit_id,
    validate_ref_name,
    validate_repo_id,
    validate_repo_type,
)

DEFAULT_BRANCH = "main"
_MAX_RETRIES = 50


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Entry:
    sha256: str
    sha1: str  # git blob id: of the content (regular files) or of the LFS pointer (large files)
    size: int
    changed_in: int  # id of the commit that last changed this path
    lfs: bool = False  # a large file (uploaded through LFS or Xet), served by sha256
    xet_hash: str | None = None  # the Xet file it is rebuilt from (None: a blob)


LARGE_FILE_BYTES = 10 << 20
# What the Hub's default .gitattributes sends to LFS whatever their size: weights, arrays, archives, audio.
LARGE_FILE_SUFFIXES = frozenset(
    [
        ".7z",
        ".arrow",
        ".bin",
        ".bz2",
        ".ckpt",
        ".ftz",
        ".gguf",
        ".gz",
        ".h5",
        ".joblib",
        ".mlmodel",
        ".model",
        ".msgpack",
        ".npy",
        ".npz",
        ".onnx",
        ".ot",
        ".parquet",
        ".pb",
        ".pickle",
        ".pkl",
        ".pt",
        ".pth",
        ".rar",
        ".safetensors",
        ".tar",
        ".tflite",
        ".tgz",
        ".wasm",
        ".xz",
        ".zip",
        ".zst",
        ".wav",
        ".mp3",
        ".flac",
        ".ogg",
        ".opus",
        ".m4a",
        ".webm",
        ".mp4",
    ]
)


def is_large_file(path: str, size: int, sample: bytes = b"") -> bool:
    """Whether the Hub would have this file uploaded as a large file (preupload answers "lfs"): over 10 MiB, a
    binary weight/array/audio format, or binary content (a NUL byte in the `sample` of its first bytes the client
    sends). Empty files stay regular: the client sends those inline anyway."""
    suffix = path[path.rfind(".") :].lower() if "." in path.rsplit("/", 1)[-1] else ""
    return size > LARGE_FILE_BYTES or (size > 0 and (suffix in LARGE_FILE_SUFFIXES or b"\0" in sample))


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git LFS pointer of a large file (what git stores; its git id is the tree `oid` the Hub reports)."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def large_entry(sha256: str, size: int, xet_hash: str | None, changed_in: int = 0) -> Entry:
    pointer = lfs_pointer(sha256, size)
    sha1 = hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()
    return Entry(sha256, sha1, size, changed_in, True, xet_hash)


@dataclass(frozen=True)
class Commit:
    id: int
    repo_id: int
    oid: str
    parent_id: int | None
    chain: tuple[int, ...]
    author: str
    summary: str
    description: str
    created_at: str


@dataclass
class Repo:
    id: int
    repo_type: str
    namespace: str
    name: str
    private: bool
    created_at: str
    last_modified: str
    card: dict
    next_pr: int

    @property
    def repo_id(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class Tree:
    """The files of one commit (immutable; shared through the cache)."""

    files: dict[str, Entry]
    _paths: list[str] | None = field(default=None, repr=False)

    @property
    def paths(self) -> list[str]:
        if self._paths is None:
            self._paths = sorted(self.files)
        return self._paths

    def under(self, folder: str) -> list[str]:
        """Paths inside `folder` (all depths), sorted; the whole tree for ''."""
        if not folder:
            return self.paths
        prefix = folder + "/"
        start = bisect.bisect_left(self.paths, prefix)
        end = bisect.bisect_left(self.paths, folder + "0")  # '0' sorts right after '/'
        return self.paths[start:end]

    def is_folder(self, path: str) -> bool:
        return bool(self.under(path)) if path else True


@dataclass
class Refs:
    branches: list[tuple[str, str]]
    tags: list[tuple[str, str]]
    pulls: list[tuple[str, str]]


class LRU:
    def __init__(self, size: int):
        self.size = size
        self.data: OrderedDict = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self.lock:
            value = self.data.get(key)
            if value is not None:
                self.data.move_to_end(key)
            return value

    def put(self, key: Any, value: Any) -> None:
        with self.lock:
            self.data[key] = value
            self.data.move_to_end(key)
            while len(self.data) > self.size:
                self.data.popitem(last=False)


class _Retry(Exception):
    """The ref moved between reading it and swapping it: apply the operations again on the new head."""


def _repo_from_row(row: Any) -> Repo:
    return Repo(
        id=row.id,
        repo_type=row.repo_type,
        namespace=row.namespace,
        name=row.name,
        private=bool(row.private),
        created_at=row.created_at,
        last_modified=row.last_modified,
        card=json.loads(row.card or "{}"),
        next_pr=row.next_pr,
    )


def _commit_from_row(row: Any) -> Commit:
    return Commit(
        id=row.id,
        repo_id=row.repo_id,
        oid=row.oid,
        parent_id=row.parent_id,
        chain=tuple(int(item) for item in row.chain.split()),
        author=row.author,
        summary=row.summary,
        description=row.description,
        created_at=row.created_at,
    )


def _entry_from_row(row: Any) -> Entry:
    return Entry(row.sha256, row.sha1, row.size, row.changed_in, bool(row.lfs), row.xet_hash)


def parse_revision(revision: str) -> tuple[str | None, str]:
    """`refs/heads/x` -> ("branch", x), `refs/tags/x` -> ("tag", x), `refs/pr/N` -> ("pr", N), else (None, rev)."""
    for prefix, kind in (("refs/heads/", "branch"), ("refs/tags/", "tag"), ("refs/pr/", "pr")):
        if revision.startswith(prefix):
            return kind, revision[len(prefix) :]
    return None, revision


# The statements of every request, built once (building SQLAlchemy expressions costs more than running them).
_REPO_BY_NAME = select(db.repos).where(
    db.repos.c.repo_type == bindparam("repo_type"),
    db.repos.c.namespace == bindparam("namespace"),
    db.repos.c.name == bindparam("name"),
)
_REF_BY_KIND = select(db.refs.c.commit_id).where(
    db.refs.c.repo_id == bindparam("repo_id"), db.refs.c.kind == bindparam("kind"), db.refs.c.name == bindparam("name")
)
_BRANCH_OR_TAG = select(db.refs.c.kind, db.refs.c.commit_id).where(
    db.refs.c.repo_id == bindparam("repo_id"),
    db.refs.c.name == bindparam("name"),
    db.refs.c.kind.in_(("branch", "tag")),
)
_REPO_AND_REF = (
    select(db.repos, db.refs.c.kind.label("ref_kind"), db.refs.c.commit_id.label("ref_commit"))
    .outerjoin(
        db.refs,
        and_(
            db.refs.c.repo_id == db.repos.c.id,
            db.refs.c.name == bindparam("ref_name"),
            db.refs.c.kind.in_(bindparam("ref_kinds", expanding=True)),
        ),
    )
    .where(
        db.repos.c.repo_type == bindparam("repo_type"),
        db.repos.c.namespace == bindparam("namespace"),
        db.repos.c.name == bindparam("name"),
    )
)
_COMMIT_BY_ID = select(db.commits).where(db.commits.c.id == bindparam("id"))
_ENTRY_IN_CHAIN = select(db.entries).where(
    db.entries.c.commit_id.in_(bindparam("chain", expanding=True)), db.entries.c.path == bindparam("path")
)


def _entry_row(commit_id: int, path: str, entry: Entry | None, changed_in: int | None) -> dict[str, Any]:
    """An `entries` row: the file at `path` as of `commit_id`, or a deletion marker (all None) when `entry` is None."""
    if entry is None:
        return dict(commit_id=commit_id, path=path, sha256=None, sha1=None, size=None, changed_in=None, lfs=None,
                    xet_hash=None)  # fmt: skip
    return dict(
        commit_id=commit_id,
        path=path,
        sha256=entry.sha256,
        sha1=entry.sha1,
        size=entry.size,
        changed_in=changed_in,
        lfs=entry.lfs,
        xet_hash=entry.xet_hash,
    )


class Store:
    """Repos, commits, trees and refs of one registry (a root folder and its database)."""

    def __init__(self, root: str | os.PathLike, database: str | None = None):
        self.root = Path(root).absolute()
        self.root.mkdir(parents=True, exist_ok=True)
        self.database = database or f"sqlite:///{self.root / 'registry.db'}"
        self.engine = db.make_engine(self.database)
        self._reader = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self.blobs = BlobStore(self.root)
        self._trees = LRU(16)
        self._entries = LRU(65536)
        self._commits = LRU(4096)
        self._create_schema()
        from hf_tts.registry.legacy import import_legacy_root

        import_legacy_root(self)

    @property
    def tmp(self) -> Path:
        return self.blobs.staging

    def close(self) -> None:
        self.blobs.close()
        self.engine.dispose()

    # --- transactions ---------------------------------------------------------------------------------------------

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reads, without a transaction (no BEGIN/COMMIT round trips): every statement sees the
        latest committed state. Readers only ever follow ids to immutable rows (a ref to its commit, a commit to
        its layers), so they need no snapshot spanning statements."""
        with self._reader.connect() as conn:
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction (SQLite: BEGIN IMMEDIATE, the database's write lock for its duration)."""
        with self.engine.connect() as conn:
            conn.execution_options(registry_write=True)
            pending: list[tuple[Commit, Tree]] = []
            conn.info["registry_new_commits"] = pending
            try:
                with conn.begin():
                    yield conn
            finally:
                conn.info.pop("registry_new_commits", None)
            # Cached only once committed: a rolled-back commit's tree must never be served.
            for commit, tree in pending:
                self._commits.put(commit.id, commit)
                self._trees.put(commit.id, tree)

    def _create_schema(self) -> None:
        with self.write() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(7247310013)"))  # two processes starting at once
            db.metadata.create_all(conn)
            version = conn.execute(select(db.settings.c.value).where(db.settings.c.key == "schema_version")).scalar()
            if version is None:
                conn.execute(insert(db.settings).values(key="schema_version", value=str(db.SCHEMA_VERSION)))
            elif int(version) > db.SCHEMA_VERSION:
                raise RuntimeError(f"the registry database has schema {version}; this hf_tts knows {db.SCHEMA_VERSION}")
            elif int(version) < 2:
                # 1 -> 2: entries learn which files are large (the new tables came with create_all above).
                conn.execute(text("ALTER TABLE entries ADD COLUMN lfs BOOLEAN"))
                conn.execute(text("ALTER TABLE entries ADD COLUMN xet_hash VARCHAR(64)"))
                self.set_setting(conn, "schema_version", str(db.SCHEMA_VERSION))
            if self.get_setting(conn, "signing_secret") is None:
                # Signs Xet tokens and upload/download URLs; in the database, so every registry process agrees.
                self.set_setting(conn, "signing_secret", secrets.token_hex(32))
            self.signing_secret = bytes.fromhex(self.get_setting(conn, "signing_secret") or "")

    def get_setting(self, conn: Connection, key: str) -> str | None:
        return conn.execute(select(db.settings.c.value).where(db.settings.c.key == key)).scalar()

    def set_setting(self, conn: Connection, key: str, value: str) -> None:
        if conn.execute(update(db.settings).where(db.settings.c.key == key).values(value=value)).rowcount == 0:
            conn.execute(insert(db.settings).values(key=key, value=value))

    # --- repos ------------------------------------------------------------------------------------------------------

    def _repo_row(self, conn: Connection, repo_type: str, repo_id: str) -> Repo | None:
        namespace, name = validate_repo_id(repo_id).split("/")
        row = conn.execute(_REPO_BY_NAME, {"repo_type": repo_type, "namespace": namespace, "name": name}).first()
        return _repo_from_row(row) if row is not None else None

    def get_repo(self, repo_type: str, repo_id: str, conn: Connection | None = None) -> Repo:
        if conn is None:
            with self.read() as conn:
                return self.get_repo(repo_type, repo_id, conn)
        repo = self._repo_row(conn, validate_repo_type(repo_type), repo_id)
        if repo is None:
            raise RegistryError(404, f"{repo_type} repository {repo_id} not found", "RepoNotFound")
        return repo

    def get_repo_at(self, repo_type: str, repo_id: str, revision: str, conn: Connection) -> tuple[Repo, int | None]:
        """The repo and the commit id `revision` names if it is a ref, in one query (the path of every download)."""
        namespace, name = validate_repo_id(repo_id).split("/")
        kind, ref_name = parse_revision(revision)
        kinds = [kind] if kind is not None else ["branch", "tag"]
        rows = conn.execute(
            _REPO_AND_REF,
            {
                "repo_type": validate_repo_type(repo_type),
                "namespace": namespace,
                "name": name,
                "ref_name": ref_name,
                "ref_kinds": kinds,
            },
        ).fetchall()
        if not rows:
            raise RegistryError(404, f"{repo_type} repository {repo_id} not found", "RepoNotFound")
        targets = {row.ref_kind: row.ref_commit for row in rows if row.ref_kind is not None}
        target = next((targets[item] for item in kinds if item in targets), None)  # a branch wins over a tag
        return _repo_from_row(rows[0]), target

    def create_repo(self, repo_type: str, repo_id: str, *, private: bool, author: str) -> tuple[Repo, bool]:
        """Create a repo with an empty initial commit on `main`; returns (repo, created) (False: it existed)."""
        repo_type = validate_repo_type(repo_type)
        namespace, name = validate_repo_id(repo_id).split("/")
        try:
            with self.write() as conn:
                existing = self._repo_row(conn, repo_type, repo_id)
                if existing is not None:
                    return existing, False
                stamp = now_iso()
                repo_pk = conn.execute(
                    insert(db.repos).values(
                        repo_type=repo_type,
                        namespace=namespace,
                        name=name,
                        private=private,
                        created_at=stamp,
                        last_modified=stamp,
                        card="{}",
                        next_pr=1,
                    )
                ).inserted_primary_key[0]
                commit = self._insert_commit(
                    conn, repo_pk, None, {}, {}, author=author, summary="initial commit", description=""
                )
                conn.execute(
                    insert(db.refs).values(repo_id=repo_pk, kind="branch", name=DEFAULT_BRANCH, commit_id=commit.id)
                )
        except IntegrityError:
            return self.get_repo(repo_type, repo_id), False  # created concurrently by another process
        return self.get_repo(repo_type, repo_id), True

    def delete_repo(self, repo: Repo) -> None:
        with self.write() as conn:
            commit_ids = select(db.commits.c.id).where(db.commits.c.repo_id == repo.id)
            conn.execute(delete(db.entries).where(db.entries.c.commit_id.in_(commit_ids)))
            for table in (db.refs, db.pulls, db.commits):
                conn.execute(delete(table).where(table.c.repo_id == repo.id))
            conn.execute(delete(db.repos).where(db.repos.c.id == repo.id))

    def move_repo(self, repo: Repo, new_repo_id: str) -> None:
        namespace, name = validate_repo_id(new_repo_id).split("/")
        try:
            with self.write() as conn:
                if self._repo_row(conn, repo.repo_type, new_repo_id) is not None:
                    raise RegistryError(409, f"cannot move {repo.repo_id} to {new_repo_id}: that repository exists")
                conn.execute(update(db.repos).where(db.repos.c.id == repo.id).values(namespace=namespace, name=name))
        except IntegrityError as error:
            raise RegistryError(409, f"cannot move {repo.repo_id} to {new_repo_id}: that repository exists") from error

    def set_private(self, repo: Repo, private: bool) -> None:
        with self.write() as conn:
            conn.execute(update(db.repos).where(db.repos.c.id == repo.id).values(private=private))

    def list_repos(
        self, repo_type: str | None = None, namespace: str | None = None, search: str | None = None
    ) -> list[Repo]:
        query = select(db.repos)
        if repo_type is not None:
            query = query.where(db.repos.c.repo_type == repo_type)
        if namespace is not None:
            query = query.where(db.repos.c.namespace == namespace)
        if search:
            pattern = "%" + search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            query = query.where(func.lower(db.repos.c.namespace + "/" + db.repos.c.name).like(pattern, escape="\\"))
        with self.read() as conn:
            return [_repo_from_row(row) for row in conn.execute(query.order_by(db.repos.c.id))]

    def used_storage(self, repo: Repo) -> int:
        """Bytes of the distinct blobs any commit of the repo references."""
        with self.read() as conn:
            blobs = (
                select(db.entries.c.sha256, db.entries.c.size)
                .join(db.commits, db.commits.c.id == db.entries.c.commit_id)
                .where(db.commits.c.repo_id == repo.id, db.entries.c.sha256.is_not(None))
                .distinct()
                .subquery()
            )
            return int(conn.execute(select(func.coalesce(func.sum(blobs.c.size), 0))).scalar() or 0)

    # --- commits and trees -------------------------------------------------------------------------------------------

    def commit_by_id(self, commit_id: int, conn: Connection | None = None) -> Commit:
        cached = self._commits.get(commit_id)
        if cached is not None:
            return cached
        if conn is None:
            with self.read() as conn:
                return self.commit_by_id(commit_id, conn)
        row = conn.execute(_COMMIT_BY_ID, {"id": commit_id}).first()
        if row is None:
            raise RegistryError(404, f"commit {commit_id} not found", "RevisionNotFound")
        commit = _commit_from_row(row)
        self._commits.put(commit_id, commit)
        return commit

    def resolve(
        self, repo: Repo, revision: str, conn: Connection | None = None, ref_target: int | None = None
    ) -> Commit:
        """A branch, tag, `refs/...` name or (short) commit id -> the commit (`ref_target`: the ref's commit id,
        already looked up by `get_repo_at`)."""
        if conn is None:
            with self.read() as conn:
                return self.resolve(repo, revision, conn)
        commit_id = ref_target if ref_target is not None else self._ref_target(conn, repo, revision)
        if commit_id is not None:
            return self.commit_by_id(commit_id, conn)
        if looks_like_commit_id(revision):
            if len(revision) == 40:
                condition = db.commits.c.oid == revision
            else:
                condition = and_(db.commits.c.oid >= revision, db.commits.c.oid < revision + "g")
            rows = conn.execute(
                select(db.commits).where(db.commits.c.repo_id == repo.id, condition).limit(2)
            ).fetchall()
            if len(rows) == 1:
                commit = _commit_from_row(rows[0])
                self._commits.put(commit.id, commit)
                return commit
            if len(rows) > 1:
                raise RegistryError(
                    404, f"short commit id {revision!r} is ambiguous in {repo.repo_id}", "RevisionNotFound"
                )
        raise RegistryError(404, f"revision {revision!r} not found in {repo.repo_id}", "RevisionNotFound")

    def _ref_target(self, conn: Connection, repo: Repo, revision: str) -> int | None:
        kind, name = parse_revision(revision)
        if kind is not None:
            return conn.execute(_REF_BY_KIND, {"repo_id": repo.id, "kind": kind, "name": name}).scalar()
        by_kind = {row.kind: row.commit_id for row in conn.execute(_BRANCH_OR_TAG, {"repo_id": repo.id, "name": name})}
        return by_kind.get("branch", by_kind.get("tag"))  # a branch wins over a tag of the same name, as in git

    def tree(self, commit: Commit, conn: Connection | None = None) -> Tree:
        cached = self._trees.get(commit.id)
        if cached is not None:
            return cached
        if conn is None:
            with self.read() as conn:
                return self.tree(commit, conn)
        position = {commit_id: index for index, commit_id in enumerate(commit.chain)}
        rows = conn.execute(
            select(
                db.entries.c.commit_id,
                db.entries.c.path,
                db.entries.c.sha256,
                db.entries.c.sha1,
                db.entries.c.size,
                db.entries.c.changed_in,
                db.entries.c.lfs,
                db.entries.c.xet_hash,
            ).where(db.entries.c.commit_id.in_(commit.chain))
        ).fetchall()
        rows.sort(key=lambda row: position[row.commit_id], reverse=True)  # oldest layer first, newest wins
        files: dict[str, Entry] = {}
        for row in rows:
            if row.sha256 is None:
                files.pop(row.path, None)
            else:
                files[row.path] = _entry_from_row(row)
        tree = Tree(files)
        self._trees.put(commit.id, tree)
        return tree

    def entry(self, commit: Commit, path: str) -> Entry | None:
        """One path of a commit: an index probe per layer, never the whole tree (HEAD/GET of a file)."""
        key = (commit.id, path)
        cached = self._entries.get(key)
        if cached is not None:
            return cached or None
        tree = self._trees.get(commit.id)
        if tree is not None:
            found = tree.files.get(path)
        else:
            position = {commit_id: index for index, commit_id in enumerate(commit.chain)}
            with self.read() as conn:
                rows = conn.execute(_ENTRY_IN_CHAIN, {"chain": list(commit.chain), "path": path}).fetchall()
            found = None
            if rows:
                row = min(rows, key=lambda row: position[row.commit_id])
                if row.sha256 is not None:
                    found = _entry_from_row(row)
        self._entries.put(key, found or False)
        return found

    def history(self, repo: Repo, commit: Commit) -> list[Commit]:
        """The commit and its ancestors, newest first (one query: ancestors always have smaller ids)."""
        with self.read() as conn:
            rows = conn.execute(
                select(db.commits).where(db.commits.c.repo_id == repo.id, db.commits.c.id <= commit.id)
            ).fetchall()
        by_id = {row.id: row for row in rows}
        result = []
        current: int | None = commit.id
        while current is not None and current in by_id:
            item = _commit_from_row(by_id[current])
            result.append(item)
            current = item.parent_id
        return result

    def refs(self, repo: Repo) -> Refs:
        with self.read() as conn:
            rows = conn.execute(
                select(db.refs.c.kind, db.refs.c.name, db.commits.c.oid)
                .join(db.commits, db.commits.c.id == db.refs.c.commit_id)
                .where(db.refs.c.repo_id == repo.id)
                .order_by(db.refs.c.kind, db.refs.c.name)
            ).fetchall()
        result = Refs([], [], [])
        for row in rows:
            {"branch": result.branches, "tag": result.tags, "pr": result.pulls}[row.kind].append((row.name, row.oid))
        return result

    def _insert_commit(
        self,
        conn: Connection,
        repo_pk: int,
        parent: Commit | None,
        files: dict[str, Entry],
        changed: dict[str, Entry | None],
        *,
        author: str,
        summary: str,
        description: str,
        created_at: str | None = None,
        oid: str | None = None,
    ) -> Commit:
        """Write a commit whose tree is `files` (= parent's tree + `changed`, None meaning deleted). Only the changed
        paths are written, unless the parent's layer chain is full: then the whole tree is written as a snapshot."""
        created_at = created_at or now_iso()
        if oid is None:
            seed = json.dumps(
                [repo_pk, parent.oid if parent else None, author, summary, description, created_at, uuid.uuid4().hex]
            )
            oid = hashlib.sha1(seed.encode()).hexdigest()
        snapshot = parent is None or len(parent.chain) >= db.MAX_CHAIN
        commit_id = conn.execute(
            insert(db.commits).values(
                repo_id=repo_pk,
                oid=oid,
                parent_id=parent.id if parent else None,
                chain="",
                author=author,
                summary=summary,
                description=description,
                created_at=created_at,
            )
        ).inserted_primary_key[0]
        chain = (commit_id,) if snapshot else (commit_id, *parent.chain)  # type: ignore[union-attr]
        conn.execute(update(db.commits).where(db.commits.c.id == commit_id).values(chain=" ".join(map(str, chain))))
        if snapshot:
            rows = [
                _entry_row(commit_id, path, entry, commit_id if path in changed else entry.changed_in)
                for path, entry in files.items()
            ]
        else:
            rows = [_entry_row(commit_id, path, entry, commit_id) for path, entry in changed.items()]
        for start in range(0, len(rows), 5000):
            conn.execute(insert(db.entries), rows[start : start + 5000])
        commit = Commit(
            commit_id, repo_pk, oid, parent.id if parent else None, chain, author, summary, description, created_at
        )
        final = {
            path: Entry(e.sha256, e.sha1, e.size, commit_id if path in changed else e.changed_in, e.lfs, e.xet_hash)
            for path, e in files.items()
        }
        conn.info["registry_new_commits"].append((commit, Tree(final)))
        return commit

    # --- writing commits -----------------------------------------------------------------------------------------------

    def commit(
        self,
        repo: Repo,
        revision: str,
        request: CommitRequest,
        *,
        author: str,
        create_pr: bool = False,
    ) -> tuple[Commit, int | None]:
        """Apply a parsed commit on `revision` (a branch, or a PR ref; with `create_pr` any revision, as the base of
        a new pull request). Returns (the new head, the PR number or None). Nothing changes -> no new commit: the
        current head is returned."""
        self._resolve_large_files(repo, request)
        for operation in request.operations:
            if operation.staged is not None:
                self.blobs.put(operation.staged)
        card = self._card_of_request(request)
        for _attempt in range(_MAX_RETRIES):
            try:
                result = self._commit_once(repo, revision, request, author=author, create_pr=create_pr, card=card)
                break
            except _Retry:
                continue
        else:
            raise RegistryError(409, f"{repo.repo_id}@{revision} is changing too fast; retry the commit")
        for operation in request.operations:
            if operation.staged is not None:
                self.blobs.ensure(operation.staged)
        return result

    def _resolve_large_files(self, repo: Repo, request: CommitRequest) -> None:
        """Each `lfsFile` line must name content uploaded to this repo (LFS batch or Xet shard), with its size: an
        unknown oid is refused before anything is written."""
        wanted = [operation for operation in request.operations if operation.lfs_oid is not None]
        if not wanted:
            return
        with self.read() as conn:
            for operation in wanted:
                found = self.large_file(repo.id, operation.lfs_oid or "", conn)
                if found is None:
                    raise RegistryError(
                        400,
                        f"lfsFile {operation.path!r}: content sha256:{operation.lfs_oid} was never uploaded to "
                        f"{repo.repo_id}; upload it first (Xet or the LFS batch API), then commit",
                    )
                size, xet_hash = found
                if operation.lfs_size is not None and operation.lfs_size != size:
                    raise RegistryError(
                        400,
                        f"lfsFile {operation.path!r}: size {operation.lfs_size} does not match the uploaded content "
                        f"sha256:{operation.lfs_oid} ({size} bytes)",
                    )
                operation.entry = large_entry(operation.lfs_oid or "", size, xet_hash)

    # --- large files (the commit side; the upload protocols live in lfs.py and xet.py) ---------------------------

    def large_file(self, repo_pk: int, sha256: str, conn: Connection | None = None) -> tuple[int, str | None] | None:
        """(size, xet hash or None) of large content uploaded to the repo, or None."""
        if conn is None:
            with self.read() as conn:
                return self.large_file(repo_pk, sha256, conn)
        row = conn.execute(
            select(db.repo_objects.c.size, db.repo_objects.c.xet_hash).where(
                db.repo_objects.c.repo_id == repo_pk, db.repo_objects.c.sha256 == sha256
            )
        ).first()
        return (int(row.size), row.xet_hash) if row is not None else None

    def link_large_file(self, conn: Connection, repo_pk: int, sha256: str, size: int, xet_hash: str | None) -> None:
        """Let the repo commit this content (after its upload was verified); a re-upload refreshes the grace time."""
        values = dict(size=size, xet_hash=xet_hash, created_at=time.time())
        updated = conn.execute(
            update(db.repo_objects)
            .where(db.repo_objects.c.repo_id == repo_pk, db.repo_objects.c.sha256 == sha256)
            .values(**values)
        ).rowcount
        if not updated:
            conn.execute(insert(db.repo_objects).values(repo_id=repo_pk, sha256=sha256, **values))

    def entry_card(self, entry: Entry | None) -> dict:
        """README metadata of a file entry ({} when it is a large file: a card is never rebuilt from xorbs)."""
        if entry is None or entry.xet_hash is not None:
            return {}
        return read_card(self.blobs.path(entry.sha256))

    def _card_of_request(self, request: CommitRequest) -> dict | None:
        """The README metadata this commit sets (None: the commit leaves README.md alone)."""
        card: dict | None = None
        for operation in request.operations:
            if operation.path == "README.md" and operation.kind == "add" and operation.entry is not None:
                card = self.entry_card(operation.entry)
            elif operation.path == "README.md" and operation.kind == "add" and operation.staged is not None:
                card = read_card(self.blobs.path(operation.staged.sha256))
            elif operation.kind == "delete" and operation.path == "README.md":
                card = {}
        return card

    def _commit_once(
        self, repo: Repo, revision: str, request: CommitRequest, *, author: str, create_pr: bool, card: dict | None
    ) -> tuple[Commit, int | None]:
        with self.write() as conn:
            current = self.get_repo(repo.repo_type, repo.repo_id, conn)
            if current.id != repo.id:
                raise RegistryError(404, f"{repo.repo_type} repository {repo.repo_id} not found", "RepoNotFound")
            pr_num = None
            if create_pr:
                head = self.resolve(repo, revision, conn)
                kind, name = "pr", ""
            else:
                kind, name = parse_revision(revision)
                kind = kind or "branch"
                if kind == "tag":
                    raise RegistryError(400, f"cannot commit to tag {name!r}: commit to a branch")
                head_id = conn.execute(
                    select(db.refs.c.commit_id).where(
                        db.refs.c.repo_id == repo.id, db.refs.c.kind == kind, db.refs.c.name == name
                    )
                ).scalar()
                if head_id is None:
                    raise RegistryError(404, f"branch {revision!r} not found in {repo.repo_id}", "RevisionNotFound")
                head = self.commit_by_id(head_id, conn)
            parent = request.parent_commit
            if parent is not None and not head.oid.startswith(parent):
                raise RegistryError(
                    412,
                    f"parentCommit {parent} is not the head of {revision} ({head.oid}): the repo changed since; "
                    "refresh and retry",
                )
            tree = self.tree(head, conn)
            files, changed = apply_operations(tree, request.operations, revision)
            if not changed and not create_pr:
                return head, None
            commit = self._insert_commit(
                conn,
                repo.id,
                head,
                files,
                changed,
                author=author,
                summary=request.summary,
                description=request.description,
            )
            stamp = commit.created_at
            if create_pr:
                pr_num = current.next_pr
                bumped = conn.execute(
                    update(db.repos)
                    .where(db.repos.c.id == repo.id, db.repos.c.next_pr == pr_num)
                    .values(next_pr=pr_num + 1)
                ).rowcount
                if bumped != 1:
                    raise _Retry
                target = self._pr_target_branch(conn, repo, revision)
                conn.execute(insert(db.refs).values(repo_id=repo.id, kind="pr", name=str(pr_num), commit_id=commit.id))
                conn.execute(
                    insert(db.pulls).values(
                        repo_id=repo.id,
                        num=pr_num,
                        title=request.summary or f"PR #{pr_num}",
                        author=author,
                        status="open",
                        target_branch=target,
                        base_commit_id=head.id,
                        created_at=stamp,
                    )
                )
            else:
                self._swap_ref(conn, repo, kind, name, head, commit)
            values: dict[str, Any] = {"last_modified": stamp}
            if kind == "branch" and name == DEFAULT_BRANCH and card is not None and not create_pr:
                values["card"] = json.dumps(card, default=str)
            conn.execute(update(db.repos).where(db.repos.c.id == repo.id).values(**values))
        return commit, pr_num

    def _pr_target_branch(self, conn: Connection, repo: Repo, revision: str) -> str:
        """The branch a PR opened on `revision` merges into: that branch, or main when it is a tag or commit."""
        kind, name = parse_revision(revision)
        if kind in (None, "branch"):
            exists = conn.execute(
                select(db.refs.c.name).where(
                    db.refs.c.repo_id == repo.id, db.refs.c.kind == "branch", db.refs.c.name == name
                )
            ).first()
            if exists is not None:
                return name
        return DEFAULT_BRANCH

    def _swap_ref(self, conn: Connection, repo: Repo, kind: str, name: str, old: Commit, new: Commit) -> None:
        swapped = conn.execute(
            update(db.refs)
            .where(
                db.refs.c.repo_id == repo.id,
                db.refs.c.kind == kind,
                db.refs.c.name == name,
                db.refs.c.commit_id == old.id,
            )
            .values(commit_id=new.id)
        ).rowcount
        if swapped != 1:
            raise _Retry

    def super_squash(self, repo: Repo, branch: str, message: str, *, author: str) -> Commit:
        """Replace a branch's history by one commit holding its current tree."""
        for _attempt in range(_MAX_RETRIES):
            try:
                with self.write() as conn:
                    head_id = self._branch_target(conn, repo, branch)
                    head = self.commit_by_id(head_id, conn)
                    files = self.tree(head, conn).files
                    commit = self._insert_commit(
                        conn, repo.id, None, files, {}, author=author, summary=message, description=""
                    )
                    self._swap_ref(conn, repo, "branch", branch, head, commit)
                    conn.execute(
                        update(db.repos).where(db.repos.c.id == repo.id).values(last_modified=commit.created_at)
                    )
                return commit
            except _Retry:
                continue
        raise RegistryError(409, f"{repo.repo_id}@{branch} is changing too fast; retry")

    def _branch_target(self, conn: Connection, repo: Repo, branch: str) -> int:
        kind, name = parse_revision(branch)
        if kind not in (None, "branch"):
            raise RegistryError(400, f"{branch!r} is not a branch")
        target = conn.execute(
            select(db.refs.c.commit_id).where(
                db.refs.c.repo_id == repo.id, db.refs.c.kind == "branch", db.refs.c.name == name
            )
        ).scalar()
        if target is None:
            raise RegistryError(404, f"branch {branch!r} not found in {repo.repo_id}", "RevisionNotFound")
        return target

    # --- refs ---------------------------------------------------------------------------------------------------------

    def create_ref(self, repo: Repo, kind: str, name: str, revision: str, message: str = "") -> Commit:
        validate_ref_name(name, kind)
        try:
            with self.write() as conn:
                exists = conn.execute(
                    select(db.refs.c.commit_id).where(
                        db.refs.c.repo_id == repo.id, db.refs.c.kind == kind, db.refs.c.name == name
                    )
                ).first()
                if exists is not None:
                    raise RegistryError(409, f"{kind} {name!r} already exists in {repo.repo_id}")
                target = self.resolve(repo, revision, conn)
                conn.execute(
                    insert(db.refs).values(repo_id=repo.id, kind=kind, name=name, commit_id=target.id, message=message)
                )
        except IntegrityError as error:
            raise RegistryError(409, f"{kind} {name!r} already exists in {repo.repo_id}") from error
        return target

    def delete_ref(self, repo: Repo, kind: str, name: str) -> None:
        if kind == "branch" and name == DEFAULT_BRANCH:
            raise RegistryError(403, f"the default branch {DEFAULT_BRANCH!r} cannot be deleted")
        with self.write() as conn:
            deleted = conn.execute(
                delete(db.refs).where(db.refs.c.repo_id == repo.id, db.refs.c.kind == kind, db.refs.c.name == name)
            ).rowcount
        if deleted == 0:
            raise RegistryError(404, f"{kind} {name!r} not found in {repo.repo_id}", "RevisionNotFound")

    # --- pull requests ------------------------------------------------------------------------------------------------

    def pull(self, repo: Repo, num: int) -> dict:
        with self.read() as conn:
            row = conn.execute(select(db.pulls).where(db.pulls.c.repo_id == repo.id, db.pulls.c.num == num)).first()
        if row is None:
            raise RegistryError(404, f"pull request #{num} not found in {repo.repo_id}")
        return dict(row._mapping)

    def merge_pull(self, repo: Repo, num: int, *, author: str, message: str | None = None) -> Commit:
        """Apply a PR's changes (its head vs the commit it started from) onto its target branch; a path that both
        sides changed differently is a conflict (409)."""
        for _attempt in range(_MAX_RETRIES):
            try:
                with self.write() as conn:
                    row = conn.execute(
                        select(db.pulls).where(db.pulls.c.repo_id == repo.id, db.pulls.c.num == num)
                    ).first()
                    if row is None:
                        raise RegistryError(404, f"pull request #{num} not found in {repo.repo_id}")
                    if row.status != "open":
                        raise RegistryError(409, f"pull request #{num} is {row.status}")
                    pr_head = self.commit_by_id(self._ref_target(conn, repo, f"refs/pr/{num}"), conn)
                    base = self.commit_by_id(row.base_commit_id, conn)
                    target = self.commit_by_id(self._branch_target(conn, repo, row.target_branch), conn)
                    base_files = self.tree(base, conn).files
                    pr_files = self.tree(pr_head, conn).files
                    target_files = self.tree(target, conn).files
                    changes = {
                        path: pr_files.get(path)
                        for path in set(base_files) | set(pr_files)
                        if not _same_content(base_files.get(path), pr_files.get(path))
                    }
                    conflicts = [
                        path
                        for path, entry in changes.items()
                        if not _same_content(base_files.get(path), target_files.get(path))
                        and not _same_content(target_files.get(path), entry)
                    ]
                    if conflicts:
                        raise RegistryError(
                            409, f"pull request #{num} conflicts with {row.target_branch} on {sorted(conflicts)[:5]}"
                        )
                    files = dict(target_files)
                    for path, entry in changes.items():
                        if entry is None:
                            files.pop(path, None)
                        else:
                            files[path] = entry
                    _check_file_folder_conflicts(files, [path for path, entry in changes.items() if entry is not None])
                    changed = {
                        path: entry
                        for path, entry in changes.items()
                        if not _same_content(target_files.get(path), entry)
                    }
                    commit = self._insert_commit(
                        conn,
                        repo.id,
                        target,
                        files,
                        changed,
                        author=author,
                        summary=message or f"Merge pull request #{num}: {row.title}",
                        description="",
                    )
                    self._swap_ref(conn, repo, "branch", row.target_branch, target, commit)
                    conn.execute(
                        update(db.pulls)
                        .where(db.pulls.c.repo_id == repo.id, db.pulls.c.num == num)
                        .values(status="merged")
                    )
                    values: dict[str, Any] = {"last_modified": commit.created_at}
                    if row.target_branch == DEFAULT_BRANCH and "README.md" in changed:
                        entry = files.get("README.md")
                        values["card"] = json.dumps(self.entry_card(entry), default=str)
                    conn.execute(update(db.repos).where(db.repos.c.id == repo.id).values(**values))
                return commit
            except _Retry:
                continue
        raise RegistryError(409, f"{repo.repo_id} is changing too fast; retry the merge")

    # --- maintenance ---------------------------------------------------------------------------------------------------

    def gc(self, grace_seconds: float = 3600.0, dry_run: bool = False) -> dict[str, int]:
        """Delete commits no ref reaches (squashed history, deleted branches) and blobs no commit references
        (deleted repos, squashes), leaving blobs younger than `grace_seconds` (uploads in flight)."""
        removed_commits = 0
        with self.write() as conn:
            rows = conn.execute(select(db.commits.c.id, db.commits.c.parent_id)).fetchall()
            parent_of = {row.id: row.parent_id for row in rows}
            reachable: set[int] = set()
            for (start,) in conn.execute(select(db.refs.c.commit_id)).fetchall():
                current = start
                while current is not None and current not in reachable:
                    reachable.add(current)
                    current = parent_of.get(current)
            doomed = [commit_id for commit_id in parent_of if commit_id not in reachable]
            removed_commits = len(doomed)
            if not dry_run:
                for start in range(0, len(doomed), 500):
                    batch = doomed[start : start + 500]
                    conn.execute(delete(db.entries).where(db.entries.c.commit_id.in_(batch)))
                    conn.execute(delete(db.commits).where(db.commits.c.id.in_(batch)))
        large = self._gc_large_files(time.time() - grace_seconds, dry_run)
        with self.read() as conn:
            referenced = {
                row[0]
                for row in conn.execute(select(db.entries.c.sha256).where(db.entries.c.sha256.is_not(None)).distinct())
            }
            referenced |= {row[0] for row in conn.execute(select(db.repo_objects.c.sha256).distinct())}
        blobs, reclaimed = self.blobs.gc(referenced, grace_seconds, dry_run=dry_run)
        staging = 0 if dry_run else self.blobs.clean_stale_staging()
        return {
            "commits": removed_commits,
            "blobs": blobs,
            "bytes": reclaimed + large.pop("xorb_bytes"),
            "staging": staging,
            **large,
        }

    def _gc_large_files(self, cutoff: float, dry_run: bool) -> dict[str, int]:
        """Uploads no commit of their repo references (LFS objects, Xet files registered by a shard, then never
        committed, or left behind by deleted commits), Xet files no repo may commit any more, and xorbs no Xet file
        uses; each only when older than `cutoff`, so an upload in flight keeps what it sent."""
        with self.write() as conn:
            committed = {
                (row.repo_id, row.sha256)
                for row in conn.execute(
                    select(db.commits.c.repo_id, db.entries.c.sha256)
                    .join(db.entries, db.entries.c.commit_id == db.commits.c.id)
                    .where(db.entries.c.lfs.is_(True))
                    .distinct()
                )
            }
            orphans = [
                (row.repo_id, row.sha256)
                for row in conn.execute(select(db.repo_objects).where(db.repo_objects.c.created_at < cutoff))
                if (row.repo_id, row.sha256) not in committed
            ]
            if not dry_run:
                for repo_pk, sha256 in orphans:
                    conn.execute(
                        delete(db.repo_objects).where(
                            db.repo_objects.c.repo_id == repo_pk, db.repo_objects.c.sha256 == sha256
                        )
                    )
            orphan_set = set(orphans)
            live_files = {
                row.xet_hash
                for row in conn.execute(select(db.repo_objects).where(db.repo_objects.c.xet_hash.is_not(None)))
                if (row.repo_id, row.sha256) not in orphan_set
            }
            live_files |= {
                row[0] for row in conn.execute(select(db.entries.c.xet_hash).where(db.entries.c.xet_hash.is_not(None)))
            }
            live_xorbs: set[str] = set()
            dead_files = []
            for row in conn.execute(select(db.xet_files.c.hash, db.xet_files.c.terms, db.xet_files.c.created_at)):
                if row.hash in live_files or row.created_at >= cutoff:
                    live_xorbs.update(term[0] for term in json.loads(row.terms))
                else:
                    dead_files.append(row.hash)
            dead_xorbs = [
                (row.hash, row.size)
                for row in conn.execute(select(db.xorbs.c.hash, db.xorbs.c.size, db.xorbs.c.created_at))
                if row.hash not in live_xorbs and row.created_at < cutoff
            ]
            if not dry_run:
                for start in range(0, len(dead_files), 500):
                    conn.execute(delete(db.xet_files).where(db.xet_files.c.hash.in_(dead_files[start : start + 500])))
                names = [name for name, _ in dead_xorbs]
                for start in range(0, len(names), 500):
                    batch = names[start : start + 500]
                    conn.execute(delete(db.dedupe_chunks).where(db.dedupe_chunks.c.xorb_hash.in_(batch)))
                    conn.execute(delete(db.xorbs).where(db.xorbs.c.hash.in_(batch)))
        if not dry_run:  # files after the rows: a row never points at a missing file
            for name, _ in dead_xorbs:
                (self.root / "xorbs" / name[:2] / name).unlink(missing_ok=True)
        return {
            "uploads": len(orphans),
            "xet_files": len(dead_files),
            "xorbs": len(dead_xorbs),
            "xorb_bytes": sum(size for _, size in dead_xorbs),
        }


def _same_content(left: Entry | None, right: Entry | None) -> bool:
    """Both absent, or both present with the same bytes (whichever commit last wrote them)."""
    return (left is None and right is None) or (left is not None and right is not None and left.sha256 == right.sha256)


def _check_file_folder_conflicts(files: dict[str, Entry], added: list[str]) -> None:
    """A path cannot be both a file and a folder (a download would silently drop one of them)."""
    paths: list[str] | None = None
    for path in added:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            if folder in files:
                raise RegistryError(409, f"cannot add {path!r}: {folder!r} is a file in this revision")
        if paths is None:
            paths = sorted(files)
        index = bisect.bisect_left(paths, path + "/")
        if index < len(paths) and paths[index].startswith(path + "/"):
            raise RegistryError(409, f"cannot add file {path!r}: a folder of that name exists in this revision")


def apply_operations(
    tree: Tree, operations: list[Operation], revision: str
) -> tuple[dict[str, Entry], dict[str, Entry | None]]:
    """The files after applying `operations` in order to `tree`, and the paths whose content changed
    (None: deleted). Deleting a missing path is an error (404), as on the Hub."""
    files = dict(tree.files)
    touched: set[str] = set()
    added: set[str] = set()
    for operation in operations:
        if operation.kind == "add":
            staged = operation.staged
            if operation.entry is not None:  # an lfsFile line, resolved against the repo's uploads
                files[operation.path] = operation.entry
            else:
                assert staged is not None
                files[operation.path] = Entry(staged.sha256, staged.sha1, staged.size, 0)
            touched.add(operation.path)
            added.add(operation.path)
            continue
        if operation.path in files and not operation.is_folder:
            del files[operation.path]
            touched.add(operation.path)
            added.discard(operation.path)
            continue
        prefix = operation.path + "/"
        doomed = [path for path in files if path.startswith(prefix)]
        if not doomed:
            raise RegistryError(
                404, f"cannot delete {operation.path!r}: no such file or folder in {revision}", "EntryNotFound"
            )
        for path in doomed:
            del files[path]
            touched.add(path)
            added.discard(path)
    if added:
        _check_file_folder_conflicts(files, sorted(added))
    changed: dict[str, Entry | None] = {}
    for path in touched:
        before, after = tree.files.get(path), files.get(path)
        if before is None and after is None:
            continue
        if before is not None and after is not None and before.sha256 == after.sha256:
            files[path] = before  # same content: keeps its last-changed commit
            continue
        changed[path] = after
    return files, changed


__all__ = [
    "Commit",
    "Entry",
    "Repo",
    "Store",
    "Tree",
    "apply_operations",
    "is_large_file",
    "large_entry",
    "lfs_pointer",
    "now_iso",
    "parse_revision",
]
