"""Import of a root written by the earlier folder-based registry (`hf_tts/hub/server.py`, before the database).

Its layout: `ROOT/models/NS/NAME/repo.json` ({"id", "private", "createdAt"}), `commits/<oid>.json` (parent, summary,
description, date, {path: {sha256, size}}) and `refs.json` ({branch: oid}); bodies in `ROOT/blobs/<sha256[:2]>/
<sha256>`, the same place the registry keeps them now. On the first start every repo, commit (with its old id, so
pinned revisions keep working) and branch is copied into the database in one transaction; the old files are left
as they were (a backup) and never read again.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import insert, text, update

from hf_tts.registry import schema as db
from hf_tts.registry.cards import read_card
from hf_tts.registry.commit_stream import git_blob_sha1

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from hf_tts.registry.store import Commit, Entry, Store

logger = logging.getLogger("hf_tts.registry")
_DONE = "legacy_import"


def _legacy_repos(root: Path) -> list[Path]:
    models = root / "models"
    if not models.is_dir():
        return []
    return sorted(path.parent for path in models.glob("*/*/repo.json"))


def import_legacy_root(store: Store) -> int:
    """Import the folder-based repos under `store.root` once; returns how many repos were imported."""
    folders = _legacy_repos(store.root)
    if not folders:
        return 0
    with store.write() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(7247310014)"))  # two processes starting at once
        if store.get_setting(conn, _DONE) is not None:
            return 0
        sha1_of: dict[str, str] = {}
        for folder in folders:
            _import_repo(store, conn, folder, sha1_of)
        store.set_setting(conn, _DONE, str(len(folders)))
    logger.warning(
        "imported %d repos of the folder-based registry under %s into the database", len(folders), store.root
    )
    return len(folders)


def _import_repo(store: Store, conn: Connection, folder: Path, sha1_of: dict[str, str]) -> None:
    from hf_tts.registry.store import Entry

    info = json.loads((folder / "repo.json").read_text())
    namespace, name = str(info["id"]).split("/")
    records = {}
    for path in (folder / "commits").glob("*.json"):
        if path.name.startswith("."):
            continue  # a temp file of an interrupted write
        record = json.loads(path.read_text())
        records[record["oid"]] = record
    refs = json.loads((folder / "refs.json").read_text())
    created = info.get("createdAt") or "1970-01-01T00:00:00.000Z"
    repo_pk = conn.execute(
        insert(db.repos).values(
            repo_type="model",
            namespace=namespace,
            name=name,
            private=bool(info.get("private")),
            created_at=created,
            last_modified=created,
            card="{}",
            next_pr=1,
        )
    ).inserted_primary_key[0]
    commits: dict[str, Commit] = {}
    trees: dict[str, dict[str, Entry]] = {}

    def entries_of(record: dict) -> dict[str, Entry]:
        files = {}
        for path, meta in record["files"].items():
            sha256 = meta["sha256"]
            if sha256 not in sha1_of:
                sha1_of[sha256] = git_blob_sha1(store.blobs.path(sha256), int(meta["size"]))
            files[path] = Entry(sha256, sha1_of[sha256], int(meta["size"]), 0)
        return files

    for oid in records:
        # Parents first; iterative, so a long history cannot hit the recursion limit.
        pending = []
        current: str | None = oid
        while current is not None and current not in commits:
            pending.append(current)
            current = records[current]["parent"]
        for item in reversed(pending):
            record = records[item]
            parent_oid = record["parent"]
            files = entries_of(record)
            before = trees.get(parent_oid, {}) if parent_oid else {}
            changed: dict[str, Entry | None] = {
                path: entry for path, entry in files.items() if before.get(path) != entry
            }
            changed.update({path: None for path in before if path not in files})
            commits[item] = store._insert_commit(
                conn,
                repo_pk,
                commits[parent_oid] if parent_oid else None,
                files,
                changed,
                author="local",
                summary=record.get("summary", ""),
                description=record.get("description", ""),
                created_at=record.get("date"),
                oid=item,
            )
            trees[item] = files
    last_modified = created
    for branch, oid in refs.items():
        commit = commits[oid]
        conn.execute(insert(db.refs).values(repo_id=repo_pk, kind="branch", name=branch, commit_id=commit.id))
        last_modified = max(last_modified, commit.created_at)
    card = {}
    main = refs.get("main")
    if main and "README.md" in records[main]["files"]:
        card = read_card(store.blobs.path(records[main]["files"]["README.md"]["sha256"]))
    conn.execute(
        update(db.repos)
        .where(db.repos.c.id == repo_pk)
        .values(card=json.dumps(card, default=str), last_modified=last_modified)
    )
