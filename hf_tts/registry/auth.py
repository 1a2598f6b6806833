"""Users, organisations and access tokens, and who may do what.

Tokens are `hf_` + 40 random base62 characters; only their sha256 is stored (a stolen database holds no usable
token), looked up by that hash and compared in constant time. A token has a role (`read`, `write`, `admin`) and may
be limited to some namespaces. A user writes to its own namespace and to organisations where it is a `write` or
`admin` member; `admin` tokens of admin users may do anything.

Modes:
- open (the default, no token exists): anyone who can reach the server reads and writes public repos as user
  `local`; private repos cannot be created or read (there is no one to show them to) and the refusal says how to
  create a token. Tokens sent by clients are ignored (a huggingface.co token stored on the machine must not lock
  the user out).
- tokens exist (`hf-tts hub token create`, or the single `--token`): writes need a token; reads of public repos stay
  open unless the server runs with `--require-token-for-reads`; private repos need a token that may read them and
  look missing (404) otherwise, as on the Hub.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
import string
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from hf_tts.registry import schema as db
from hf_tts.registry.errors import RegistryError, validate_account_name

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from hf_tts.registry.store import Repo, Store

ROLES = ("read", "write", "admin")
TOKENS_TTL = 1.0
OPEN_USER = "local"
_ALPHABET = string.ascii_letters + string.digits
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"  # the message huggingface_hub recognises


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def new_token_secret() -> str:
    return "hf_" + "".join(secrets.choice(_ALPHABET) for _ in range(40))


_ACTIVE_TOKEN_EXISTS = select(db.tokens.c.id).where(db.tokens.c.revoked_at.is_(None)).limit(1)
_TOKEN_BY_HASH = (
    select(db.tokens, db.accounts.c.name.label("user_name"), db.accounts.c.is_admin, db.accounts.c.fullname)
    .join(db.accounts, db.accounts.c.id == db.tokens.c.user_id)
    .where(db.tokens.c.hash == bindparam("hash"), db.tokens.c.revoked_at.is_(None))
)


@dataclass(frozen=True)
class Principal:
    """Who is asking: an authenticated token's user, or anonymous (`name` is "local" in open mode, None else)."""

    name: str | None
    anonymous: bool
    role: str | None = None
    is_admin: bool = False
    namespaces: frozenset[str] | None = None
    orgs: dict[str, str] = field(default_factory=dict)
    token_name: str | None = None
    token_created: str | None = None
    fullname: str = ""

    def may_use(self, namespace: str, need: str) -> bool:
        if self.is_admin and self.role == "admin":
            return True
        if self.namespaces is not None and namespace not in self.namespaces:
            return False
        if self.name == namespace:
            return True
        org_role = self.orgs.get(namespace)
        if org_role is None:
            return False
        return need == "read" or org_role in ("write", "admin")


@dataclass
class AccessPolicy:
    """Server-wide settings that decide access (mutable: tests flip them on a running server)."""

    static_token: str | None = None  # the single `--token` (an admin token that lives only in the server's memory)
    read_only: bool = False
    require_token_for_reads: bool = False


class Auth:
    def __init__(self, store: Store, policy: AccessPolicy):
        self.store = store
        self.policy = policy
        self._tokens_exist = False
        self._tokens_checked = -math.inf

    # --- requests -------------------------------------------------------------------------------------------------

    def tokens_configured(self, conn: Connection | None = None) -> bool:
        """Whether any token exists (then anonymous writes are refused). Remembered for `TOKENS_TTL` seconds, as
        every anonymous request asks: a token created from the command line takes effect within that delay.
        A request that presents a token is always checked against the database."""
        if self.policy.static_token:
            return True
        now = time.monotonic()
        if now - self._tokens_checked < TOKENS_TTL:
            return self._tokens_exist
        if conn is None:
            with self.store.read() as conn:
                return self.tokens_configured(conn)
        self._tokens_exist = conn.execute(_ACTIVE_TOKEN_EXISTS).first() is not None
        self._tokens_checked = now
        return self._tokens_exist

    def authenticate(self, bearer: str | None, conn: Connection | None = None) -> Principal:
        """The principal of a request's bearer token (401 for a token this registry does not know, once tokens
        exist). `conn`: a read transaction to reuse (one per request keeps small requests fast)."""
        if conn is None:
            with self.store.read() as conn:
                return self.authenticate(bearer, conn)
        static = self.policy.static_token
        if bearer and static and hmac.compare_digest(bearer.encode(), static.encode()):
            return Principal(OPEN_USER, anonymous=False, role="admin", is_admin=True, token_name="--token")
        row = None
        if bearer:
            digest = hash_token(bearer)
            row = conn.execute(_TOKEN_BY_HASH, {"hash": digest}).first()
        if row is None or not hmac.compare_digest(row.hash, hash_token(bearer or "")):
            if not self.tokens_configured(conn):
                return Principal(OPEN_USER, anonymous=True, role="write")
            if bearer:
                raise RegistryError(401, INVALID_CREDENTIALS)
            return Principal(None, anonymous=True)
        orgs = {
            org.name: org.role
            for org in conn.execute(
                select(db.accounts.c.name, db.memberships.c.role)
                .join(db.memberships, db.memberships.c.org_id == db.accounts.c.id)
                .where(db.memberships.c.user_id == row.user_id)
            )
        }
        return Principal(
            row.user_name,
            anonymous=False,
            role=row.role,
            is_admin=bool(row.is_admin),
            namespaces=frozenset(json.loads(row.namespaces)) if row.namespaces else None,
            orgs=orgs,
            token_name=row.name,
            token_created=row.created_at,
            fullname=row.fullname,
        )

    def check_read(self, principal: Principal, repo: Repo) -> None:
        if self.policy.require_token_for_reads and principal.anonymous:
            raise RegistryError(401, "this registry needs a token for every read: pass token=... or set HF_TOKEN")
        if repo.private and (principal.anonymous or not principal.may_use(repo.namespace, "read")):
            # Hidden, as on the Hub: a private repo one may not read looks like a missing one.
            raise RegistryError(404, f"{repo.repo_type} repository {repo.repo_id} not found", "RepoNotFound")

    def check_any_read(self, principal: Principal) -> None:
        if self.policy.require_token_for_reads and principal.anonymous:
            raise RegistryError(401, "this registry needs a token for every read: pass token=... or set HF_TOKEN")

    def check_write(self, principal: Principal, namespace: str) -> None:
        if self.policy.read_only:
            raise RegistryError(403, "this registry is read-only")
        if principal.anonymous:
            if principal.name == OPEN_USER:
                return
            raise RegistryError(401, "writes to this registry need a token: pass token=... or set HF_TOKEN")
        if principal.role == "read":
            raise RegistryError(403, f"token {principal.token_name!r} is read-only")
        if not principal.may_use(namespace, "write"):
            raise RegistryError(
                403, f"user {principal.name!r} (token {principal.token_name!r}) may not write to {namespace!r}"
            )

    def check_private_allowed(self, principal: Principal) -> None:
        if principal.anonymous:
            raise RegistryError(
                403,
                "private repos need accounts: create a user and a token with `hf-tts hub user create NAME --root ROOT` "
                "and `hf-tts hub token create --user NAME --root ROOT`, then pass the token (HF_TOKEN or `hf auth login`)",
            )

    def whoami(self, principal: Principal) -> dict:
        if principal.anonymous:
            raise RegistryError(401, INVALID_CREDENTIALS)
        return {
            "type": "user",
            "id": principal.name,
            "name": principal.name,
            "fullname": principal.fullname or principal.name,
            "email": None,
            "emailVerified": False,
            "canPay": False,
            "isPro": False,
            "periodEnd": None,
            "avatarUrl": "",
            "isAdmin": principal.is_admin,
            "orgs": [
                {"type": "org", "id": org, "name": org, "fullname": org, "roleInOrg": role, "avatarUrl": ""}
                for org, role in sorted(principal.orgs.items())
            ],
            "auth": {
                "type": "access_token",
                "accessToken": {
                    "displayName": principal.token_name,
                    "role": principal.role,
                    "createdAt": principal.token_created,
                    **({"namespaces": sorted(principal.namespaces)} if principal.namespaces is not None else {}),
                },
            },
        }


# --- administration (the `hf-tts hub user|org|token` commands; they work on the database directly) ----------------


def _account_id(conn, name: str, kind: str | None = None) -> int:  # noqa: ANN001
    row = conn.execute(select(db.accounts.c.id, db.accounts.c.kind).where(db.accounts.c.name == name)).first()
    if row is None or (kind is not None and row.kind != kind):
        raise RegistryError(404, f"{kind or 'account'} {name!r} does not exist")
    return row.id


def create_account(store: Store, name: str, kind: str, *, fullname: str = "", is_admin: bool = False) -> None:
    from hf_tts.registry.store import now_iso

    validate_account_name(name)
    try:
        with store.write() as conn:
            if conn.execute(select(db.accounts.c.id).where(db.accounts.c.name == name)).first() is not None:
                raise RegistryError(409, f"account {name!r} already exists")
            conn.execute(
                insert(db.accounts).values(
                    name=name, kind=kind, fullname=fullname, is_admin=is_admin, created_at=now_iso()
                )
            )
    except IntegrityError as error:
        raise RegistryError(409, f"account {name!r} already exists") from error


def list_accounts(store: Store, kind: str) -> list[dict]:
    with store.read() as conn:
        rows = conn.execute(
            select(db.accounts).where(db.accounts.c.kind == kind).order_by(db.accounts.c.name)
        ).fetchall()
        result = []
        for row in rows:
            item = {"name": row.name, "fullname": row.fullname, "admin": bool(row.is_admin), "created": row.created_at}
            column = db.memberships.c.org_id if kind == "org" else db.memberships.c.user_id
            other = db.memberships.c.user_id if kind == "org" else db.memberships.c.org_id
            item["members" if kind == "org" else "orgs"] = {
                member.name: member.role
                for member in conn.execute(
                    select(db.accounts.c.name, db.memberships.c.role)
                    .join(db.memberships, other == db.accounts.c.id)
                    .where(column == row.id)
                )
            }
            result.append(item)
    return result


def set_membership(store: Store, org: str, user: str, role: str | None) -> None:
    """Add `user` to `org` with `role`, change its role, or remove it (role None)."""
    if role is not None and role not in ROLES:
        raise RegistryError(400, f"role must be one of {', '.join(ROLES)}, got {role!r}")
    with store.write() as conn:
        org_id = _account_id(conn, org, "org")
        user_id = _account_id(conn, user, "user")
        conn.execute(
            delete(db.memberships).where(db.memberships.c.org_id == org_id, db.memberships.c.user_id == user_id)
        )
        if role is not None:
            conn.execute(insert(db.memberships).values(org_id=org_id, user_id=user_id, role=role))


def create_token(store: Store, user: str, name: str, role: str, namespaces: list[str] | None = None) -> str:
    """Create a token and return its secret (shown once; only its hash is kept)."""
    from hf_tts.registry.store import now_iso

    if role not in ROLES:
        raise RegistryError(400, f"role must be one of {', '.join(ROLES)}, got {role!r}")
    for namespace in namespaces or []:
        validate_account_name(namespace)
    secret = new_token_secret()
    with store.write() as conn:
        user_id = _account_id(conn, user, "user")
        conn.execute(
            insert(db.tokens).values(
                user_id=user_id,
                name=name,
                hash=hash_token(secret),
                hint=secret[-4:],
                role=role,
                namespaces=json.dumps(sorted(namespaces)) if namespaces else None,
                created_at=now_iso(),
            )
        )
    return secret


def list_tokens(store: Store, user: str | None = None) -> list[dict]:
    query = select(db.tokens, db.accounts.c.name.label("user_name")).join(
        db.accounts, db.accounts.c.id == db.tokens.c.user_id
    )
    if user is not None:
        query = query.where(db.accounts.c.name == user)
    with store.read() as conn:
        rows = conn.execute(query.order_by(db.tokens.c.id)).fetchall()
    return [
        {
            "id": row.id,
            "user": row.user_name,
            "name": row.name,
            "role": row.role,
            "namespaces": json.loads(row.namespaces) if row.namespaces else None,
            "hint": "..." + row.hint,
            "created": row.created_at,
            "revoked": row.revoked_at,
        }
        for row in rows
    ]


def revoke_token(store: Store, token_id: int) -> None:
    from hf_tts.registry.store import now_iso

    with store.write() as conn:
        changed = conn.execute(
            update(db.tokens)
            .where(db.tokens.c.id == token_id, db.tokens.c.revoked_at.is_(None))
            .values(revoked_at=now_iso())
        ).rowcount
    if changed == 0:
        raise RegistryError(404, f"no active token with id {token_id} (see `hf-tts hub token list`)")
