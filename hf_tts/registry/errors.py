"""The registry's one error type and the validators of names that come from clients (repo ids, paths, refs).

Every client error is a `RegistryError`: an HTTP status, a one-line message, and the `X-Error-Code` huggingface_hub
maps to its exceptions (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`, `GatedRepo`). The store raises it too
(it knows no HTTP, but the status is the natural way to say "not found" vs "conflict"); the app turns it into a
response.
"""

from __future__ import annotations

import re

_SEGMENT = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")
_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
_HEX = re.compile(r"^[0-9a-f]{4,40}$")
# Namespaces that would collide with the URL layout (/api/..., /datasets/NS/NAME/resolve/...).
RESERVED_NAMESPACES = frozenset({"api", "datasets", "spaces", "models", "kernels", "buckets", "settings"})
REPO_TYPES = ("model", "dataset")


class RegistryError(Exception):
    """An answer other than 2xx: HTTP status, message, and the `X-Error-Code` huggingface_hub maps to its errors."""

    def __init__(self, status: int, message: str, error_code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = error_code
        self.headers = headers or {}


def validate_repo_type(repo_type: str | None) -> str:
    repo_type = repo_type or "model"
    if repo_type not in REPO_TYPES:
        raise RegistryError(400, f"repo type {repo_type!r} is not served here: use 'model' or 'dataset'")
    return repo_type


def validate_repo_id(repo_id: object) -> str:
    """`namespace/name`, each 1-96 characters of letters, digits, `.`, `_`, `-` (no `..`/`--`, no leading dot)."""
    parts = repo_id.split("/") if isinstance(repo_id, str) else []
    if (
        len(parts) != 2
        or not all(_SEGMENT.fullmatch(part) for part in parts)
        or any(".." in part or "--" in part for part in parts)
        or parts[0].lower() in RESERVED_NAMESPACES
    ):
        raise RegistryError(
            400, f"invalid repo id {repo_id!r}: use 'namespace/name' with letters, digits, '.', '_' and '-'"
        )
    return repo_id  # type: ignore[return-value]


def validate_account_name(name: object) -> str:
    if not isinstance(name, str) or not _SEGMENT.fullmatch(name) or ".." in name or "--" in name:
        raise RegistryError(400, f"invalid account name {name!r}: use letters, digits, '.', '_' and '-'")
    if name.lower() in RESERVED_NAMESPACES:
        raise RegistryError(400, f"account name {name!r} is reserved")
    return name


def validate_repo_path(path: object) -> str:
    """A relative path inside a repo: no absolute paths, no `.`/`..`/empty segments, no backslashes, no `.git`
    segment anywhere (a `.git/config` inside a repo would be git's own config once cloned)."""
    segments = path.split("/") if isinstance(path, str) else []
    if (
        not segments
        or not path
        or len(path) > 1000  # type: ignore[arg-type]
        or "\\" in path  # type: ignore[operator]
        or "\x00" in path  # type: ignore[operator]
        or any(segment in ("", ".", "..", ".git") for segment in segments)
    ):
        raise RegistryError(
            400, f"invalid path in repo {path!r}: paths are relative, without '.', '..', '//' or a '.git' folder"
        )
    return path  # type: ignore[return-value]


def validate_ref_name(name: object, what: str = "branch") -> str:
    """A branch or tag name: git's rules, simplified (no `..`, no `//`, no trailing `/` or `.lock`, not `refs/...`)."""
    if (
        not isinstance(name, str)
        or not _REF.fullmatch(name)
        or ".." in name
        or "//" in name
        or name.endswith(("/", ".lock", "."))
        or name.startswith("refs/")
        or any(segment.startswith(".") for segment in name.split("/"))
    ):
        raise RegistryError(400, f"invalid {what} name {name!r}")
    return name


def looks_like_commit_id(revision: str) -> bool:
    """4 to 40 lowercase hex digits: a full or short commit id (git's minimum abbreviation is 4)."""
    return bool(_HEX.fullmatch(revision))
