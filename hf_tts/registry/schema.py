"""The registry's tables (SQLAlchemy Core) and the engine: a SQLite file under the root by default, PostgreSQL
(psycopg 3) for teams that run several registry processes or machines against one database.

Git-like objects:
- `commits`: one row per commit (oid, parent, author, message, date). A commit's tree is not stored whole:
  `entries` holds only the paths the commit changed (a NULL sha256 is a deletion), and `chain` lists the commits
  whose entries make up the tree, newest first, ending at a commit that stored a full snapshot. A one-file commit in
  a 20,000-file repo writes one row; a full snapshot is written only when the chain grows past `MAX_CHAIN` layers,
  which bounds both lookups (a (commit, path) probe reads at most `MAX_CHAIN` index entries) and storage.
- `refs`: branches, tags and pull-request refs, updated with compare-and-swap on the previous target inside a
  transaction, so concurrent processes never lose an acknowledged commit.

Large files (Git LFS and Xet):
- an entry with `lfs` set is a large file: `sha256` is its content, `sha1` the git id of its LFS pointer, and
  `xet_hash` (when uploaded through Xet) the Xet file it is rebuilt from; its bytes are a blob (LFS) or xorbs (Xet);
- `repo_objects`: the large contents a repo may commit (uploaded to it through LFS or a Xet shard): an `lfsFile`
  line naming anything else is refused, so a sha256 alone never grants access to another repo's bytes;
- `xorbs`: received xorbs, each verified against its hash, with the index of its chunks; `xet_files`: registered
  file reconstructions (terms); `dedupe_chunks`: the chunks the global dedupe query can find, and their xorb.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)

SCHEMA_VERSION = 2  # 2: large files (entries.lfs, entries.xet_hash and the tables below)
MAX_CHAIN = 32

metadata = MetaData()

settings = Table(
    "registry_settings",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

accounts = Table(
    "accounts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(96), nullable=False, unique=True),
    Column("kind", String(8), nullable=False),  # "user" | "org"
    Column("fullname", String(200), nullable=False, default=""),
    Column("is_admin", Boolean, nullable=False, default=False),
    Column("created_at", String(32), nullable=False),
)

memberships = Table(
    "memberships",
    metadata,
    Column("org_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True),
    Column("role", String(8), nullable=False),  # "read" | "write" | "admin"
)

tokens = Table(
    "tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", Integer, ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(100), nullable=False),
    Column("hash", String(64), nullable=False, unique=True),  # sha256 of the secret, never the secret
    Column("hint", String(16), nullable=False),  # the secret's last characters, for `token list`
    Column("role", String(8), nullable=False),  # "read" | "write" | "admin"
    Column("namespaces", Text, nullable=True),  # JSON list; NULL = every namespace the user may use
    Column("created_at", String(32), nullable=False),
    Column("revoked_at", String(32), nullable=True),
)

repos = Table(
    "repos",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("repo_type", String(8), nullable=False),
    Column("namespace", String(96), nullable=False),
    Column("name", String(96), nullable=False),
    Column("private", Boolean, nullable=False, default=False),
    Column("created_at", String(32), nullable=False),
    Column("last_modified", String(32), nullable=False),
    Column("card", Text, nullable=False, default="{}"),  # README front matter of main's head (JSON), for listing
    Column("next_pr", Integer, nullable=False, default=1),
    UniqueConstraint("repo_type", "namespace", "name", name="uq_repo_name"),
    sqlite_autoincrement=True,  # ids are never reused: caches key on them
)

commits = Table(
    "commits",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("repo_id", Integer, ForeignKey("repos.id", ondelete="CASCADE"), nullable=False),
    Column("oid", String(40), nullable=False),
    Column("parent_id", BigInteger().with_variant(Integer, "sqlite"), nullable=True),
    Column("chain", Text, nullable=False),  # space-separated commit ids, newest first, ending at a snapshot
    Column("author", String(96), nullable=False),
    Column("summary", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("created_at", String(32), nullable=False),
    Index("ix_commits_repo_oid", "repo_id", "oid"),
    sqlite_autoincrement=True,
)

entries = Table(
    "entries",
    metadata,
    Column("commit_id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("path", String(1000), primary_key=True),
    Column("sha256", String(64), nullable=True),  # NULL: the path was deleted in this layer
    Column("sha1", String(40), nullable=True),
    Column("size", BigInteger, nullable=True),
    Column("changed_in", BigInteger().with_variant(Integer, "sqlite"), nullable=True),  # commit that last changed it
    Column("lfs", Boolean, nullable=True),  # NULL/false: a regular (inline) file
    Column("xet_hash", String(64), nullable=True),
    Index("ix_entries_sha256", "sha256"),
)

repo_objects = Table(
    "repo_objects",
    metadata,
    Column("repo_id", Integer, ForeignKey("repos.id", ondelete="CASCADE"), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("xet_hash", String(64), nullable=True),  # NULL: the bytes are a blob (LFS upload)
    Column("created_at", Float, nullable=False),  # unix time: gc keeps young, uncommitted uploads
    PrimaryKeyConstraint("repo_id", "sha256"),
)

xorbs = Table(
    "xorbs",
    metadata,
    Column("hash", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),  # bytes stored
    Column("num_chunks", Integer, nullable=False),
    Column("chunk_index", LargeBinary, nullable=False),  # xet_format.XorbIndex.to_bytes()
    Column("created_at", Float, nullable=False),
)

xet_files = Table(
    "xet_files",
    metadata,
    Column("hash", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("terms", Text, nullable=False),  # JSON [[xorb, start, end, unpacked], ...]
    Column("created_at", Float, nullable=False),
)

dedupe_chunks = Table(
    "dedupe_chunks",
    metadata,
    Column("chunk_hash", String(64), primary_key=True),
    Column("xorb_hash", String(64), nullable=False),
    Index("ix_dedupe_chunks_xorb", "xorb_hash"),
)

refs = Table(
    "refs",
    metadata,
    Column("repo_id", Integer, ForeignKey("repos.id", ondelete="CASCADE"), primary_key=True),
    Column("kind", String(8), primary_key=True),  # "branch" | "tag" | "pr"
    Column("name", String(200), primary_key=True),
    Column("commit_id", BigInteger().with_variant(Integer, "sqlite"), nullable=False),
    Column("message", Text, nullable=False, default=""),
)

pulls = Table(
    "pulls",
    metadata,
    Column("repo_id", Integer, ForeignKey("repos.id", ondelete="CASCADE"), primary_key=True),
    Column("num", Integer, primary_key=True),
    Column("title", Text, nullable=False),
    Column("author", String(96), nullable=False),
    Column("status", String(8), nullable=False),  # "open" | "merged" | "closed"
    Column("target_branch", String(200), nullable=False),
    Column("base_commit_id", BigInteger().with_variant(Integer, "sqlite"), nullable=False),
    Column("created_at", String(32), nullable=False),
)


def make_engine(url: str) -> Engine:
    """An engine for `url`. SQLite: WAL (readers never block the writer), a 30 s busy timeout, and write
    transactions that take the write lock at BEGIN (`BEGIN IMMEDIATE`), so two processes never deadlock upgrading
    a read lock. PostgreSQL: psycopg 3, pre-ping (a restarted database is reconnected)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, pool_size=8)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection, _record) -> None:  # noqa: ANN001  (DBAPI objects)
            dbapi_connection.isolation_level = None  # transactions are begun below, not by the driver
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(connection) -> None:  # noqa: ANN001
            options = connection.get_execution_options()
            if options.get("isolation_level") == "AUTOCOMMIT":
                return  # reads: one implicit transaction per statement
            connection.exec_driver_sql("BEGIN IMMEDIATE" if options.get("registry_write", False) else "BEGIN")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=8, max_overflow=8)
