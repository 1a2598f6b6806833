"""`hf-tts hub ...`: the Hub-compatible model registry (see `hf_tts/registry/`).

- `serve`: run it (uvicorn); the first stdout line is its URL.
- `gc`: reclaim commits no ref reaches, blobs no commit references, and large-file uploads (LFS objects, Xet files
  and xorbs) nothing commits.
- `user` / `org` / `token`: accounts and access tokens, written straight into the registry's database (the
  server need not run; a running one sees the change on its next request).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import sys

from hf_tts.errors import InputError


def _location(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, help="registry folder (blobs, and the SQLite database by default)")
    parser.add_argument(
        "--database",
        default=os.environ.get("HF_TTS_HUB_DATABASE"),
        help="database URL, e.g. postgresql://user@host/db (default: $HF_TTS_HUB_DATABASE, else ROOT/registry.db)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"--port must be in 0..65535, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("hub", help="the Hub-compatible model registry (serve, gc, users, tokens)")
    actions = parser.add_subparsers(dest="hub_command", metavar="ACTION", parser_class=type(parser))
    actions.required = True

    serve = actions.add_parser(
        "serve",
        help="serve a registry for huggingface_hub / transformers / datasets (point HF_ENDPOINT at it)",
        description="Serve ROOT as a Hub: push with push_to_hub / hf-tts push / upload_folder and load with "
        "from_pretrained / pipeline / load_dataset after `export HF_ENDPOINT=<printed url>`. Stop with Ctrl-C.",
    )
    _location(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=0, help="port (default: 0, a free port; the URL is printed)")
    serve.add_argument("--public-url", help="the URL clients use, for URLs in answers (default: http://HOST:PORT)")
    serve.add_argument(
        "--token",
        default=os.environ.get("HF_TTS_HUB_TOKEN"),
        help="one admin token kept only in memory, for a quick shared server (default: $HF_TTS_HUB_TOKEN); "
        "prefer `hf-tts hub token create`",
    )
    serve.add_argument("--read-only", action="store_true", help="refuse every write")
    serve.add_argument(
        "--require-token-for-reads", action="store_true", help="every request needs a valid token, reads included"
    )
    serve.add_argument("--quiet", action="store_true", help="no access log (errors are still logged)")
    serve.add_argument("--limit-concurrency", type=_positive_int, default=1000, help="connections before 503s")
    serve.add_argument("--max-upload-mb", type=_positive_int, default=65536, help="largest commit body, in MiB")
    serve.set_defaults(func=_serve)

    gc = actions.add_parser("gc", help="reclaim unreferenced commits, blobs and large-file uploads")
    _location(gc)
    gc.add_argument(
        "--grace-seconds",
        type=float,
        default=3600.0,
        help="keep unreferenced blobs younger than this (uploads in flight; default 3600)",
    )
    gc.add_argument("--dry-run", action="store_true", help="only report what would be removed")
    gc.set_defaults(func=_gc)

    user = actions.add_parser("user", help="users: create, list")
    user_actions = user.add_subparsers(dest="user_command", metavar="ACTION", parser_class=type(parser))
    user_actions.required = True
    create = user_actions.add_parser("create", help="create a user")
    _location(create)
    create.add_argument("name")
    create.add_argument("--fullname", default="")
    create.add_argument("--admin", action="store_true", help="may read and write every namespace with an admin token")
    create.set_defaults(func=_user_create)
    listing = user_actions.add_parser("list", help="list users")
    _location(listing)
    listing.set_defaults(func=_account_list, kind="user")

    org = actions.add_parser("org", help="organisations: create, list, add/remove members")
    org_actions = org.add_subparsers(dest="org_command", metavar="ACTION", parser_class=type(parser))
    org_actions.required = True
    create = org_actions.add_parser("create", help="create an organisation")
    _location(create)
    create.add_argument("name")
    create.add_argument("--fullname", default="")
    create.set_defaults(func=_org_create)
    listing = org_actions.add_parser("list", help="list organisations and members")
    _location(listing)
    listing.set_defaults(func=_account_list, kind="org")
    add = org_actions.add_parser("add", help="add a member (or change its role)")
    _location(add)
    add.add_argument("org")
    add.add_argument("user")
    add.add_argument("--role", choices=("read", "write", "admin"), default="write")
    add.set_defaults(func=_org_member)
    remove = org_actions.add_parser("remove", help="remove a member")
    _location(remove)
    remove.add_argument("org")
    remove.add_argument("user")
    remove.set_defaults(func=_org_member, role=None)

    token = actions.add_parser("token", help="access tokens: create, list, revoke")
    token_actions = token.add_subparsers(dest="token_command", metavar="ACTION", parser_class=type(parser))
    token_actions.required = True
    create = token_actions.add_parser("create", help="create a token; its secret is printed once")
    _location(create)
    create.add_argument("--user", required=True, help="the user the token acts as")
    create.add_argument("--name", default="token", help="a label (shown by `hf auth login` and `token list`)")
    create.add_argument("--role", choices=("read", "write", "admin"), default="write")
    create.add_argument("--namespace", action="append", help="limit the token to this namespace (repeatable)")
    create.set_defaults(func=_token_create)
    listing = token_actions.add_parser("list", help="list tokens (never their secrets)")
    _location(listing)
    listing.add_argument("--user")
    listing.set_defaults(func=_token_list)
    revoke = token_actions.add_parser("revoke", help="revoke a token by id (see `token list`)")
    _location(revoke)
    revoke.add_argument("id", type=_positive_int)
    revoke.set_defaults(func=_token_revoke)


def _open_store(args: argparse.Namespace):  # noqa: ANN202  (a Store; imported late)
    from sqlalchemy.exc import SQLAlchemyError

    from hf_tts.registry.store import Store

    if os.path.exists(args.root) and not os.path.isdir(args.root):
        raise InputError(f"--root {args.root} is a file; pass the registry folder")
    try:
        return Store(args.root, args.database)
    except SQLAlchemyError as error:
        message = str(error.orig if getattr(error, "orig", None) else error).strip().splitlines()[0]
        raise InputError(f"cannot open the registry database {args.database or args.root}: {message}") from None
    except ModuleNotFoundError as error:
        raise InputError(f"cannot open {args.database}: {error} (install hf_tts[postgres] for PostgreSQL)") from None


def _admin(action):  # noqa: ANN001, ANN202
    """Run an account/token action on the store; the registry's own errors become one-line input errors."""
    from hf_tts.registry.errors import RegistryError

    def run(args: argparse.Namespace) -> int:
        store = _open_store(args)
        try:
            return action(store, args) or 0
        except RegistryError as error:
            raise InputError(error.message) from None
        finally:
            store.close()

    return run


@_admin
def _user_create(store, args: argparse.Namespace) -> None:  # noqa: ANN001
    from hf_tts.registry.auth import create_account

    create_account(store, args.name, "user", fullname=args.fullname, is_admin=args.admin)
    print(
        f"created user {args.name}; give it a token with: hf-tts hub token create --root {args.root} --user {args.name}"
    )


@_admin
def _org_create(store, args: argparse.Namespace) -> None:  # noqa: ANN001
    from hf_tts.registry.auth import create_account

    create_account(store, args.name, "org", fullname=args.fullname)
    print(f"created organisation {args.name}")


@_admin
def _org_member(store, args: argparse.Namespace) -> None:  # noqa: ANN001
    from hf_tts.registry.auth import set_membership

    set_membership(store, args.org, args.user, args.role)
    print(f"{args.user} is {'now ' + args.role + ' in' if args.role else 'no longer a member of'} {args.org}")


@_admin
def _account_list(store, args: argparse.Namespace) -> None:  # noqa: ANN001
    from hf_tts.registry.auth import list_accounts

    for item in list_accounts(store, args.kind):
        print(json.dumps(item))


@_admin
def _token_create(store, args: argparse.Namespace) -> None:  # noqa: ANN001
    from hf_tts.registry.auth import create_token

    secret = create_token(store, args.user, args.name, args.role, args.namespace)
    print(secret)
    print(
        f"token {args.name!r} ({args.role}) for {args.user}: shown once, only its hash is stored; "
        "use it with `hf auth login --token ...` or HF_TOKEN",
        file=sys.stderr,
    )


@_admin
def _token_list(store, args: argparse.Namespace) -> None:  # noqa: ANN001
    from hf_tts.registry.auth import list_tokens

    for item in list_tokens(store, args.user):
        print(json.dumps(item))


@_admin
def _token_revoke(store, args: argparse.Namespace) -> None:  # noqa: ANN001
    from hf_tts.registry.auth import revoke_token

    revoke_token(store, args.id)
    print(f"revoked token {args.id}")


def _gc(args: argparse.Namespace) -> int:
    if args.grace_seconds < 0 or args.grace_seconds != args.grace_seconds:
        raise InputError(f"--grace-seconds must be a non-negative number, got {args.grace_seconds}")
    store = _open_store(args)
    try:
        report = store.gc(args.grace_seconds, dry_run=args.dry_run)
    finally:
        store.close()
    verb = "would remove" if args.dry_run else "removed"
    print(
        f"{verb} {report['commits']} unreachable commits, {report['blobs']} blobs, {report['xorbs']} xorbs, "
        f"{report['xet_files']} Xet files and {report['uploads']} uncommitted large-file uploads "
        f"({report['bytes']} bytes); cleaned {report['staging']} stale upload folders"
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from hf_tts.registry.server import LocalHubServer, configure_logging

    if args.public_url is not None and not args.public_url.startswith(("http://", "https://")):
        raise InputError(f"--public-url must start with http:// or https://, got {args.public_url!r}")
    try:
        server = LocalHubServer(
            args.root,
            args.host,
            args.port,
            database=args.database,
            token=args.token,
            read_only=args.read_only,
            require_token_for_reads=args.require_token_for_reads,
            public_url=args.public_url,
            log_requests=not args.quiet,
            limit_concurrency=args.limit_concurrency,
            max_upload_bytes=args.max_upload_mb << 20,
        )
    except OSError as error:
        raise InputError(f"cannot serve on {args.host}:{args.port}: {error.strerror or error}") from error
    except SQLAlchemyError as error:
        message = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        raise InputError(f"cannot open the registry database {args.database or args.root}: {message}") from None
    except ModuleNotFoundError as error:
        raise InputError(f"cannot open {args.database}: {error} (install hf_tts[postgres] for PostgreSQL)") from None
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    tokens = server.app.app.state.registry.auth.tokens_configured()
    if not loopback and not tokens and not args.read_only:
        print(f"warning: {args.host} is reachable from other machines and writes need no token", file=sys.stderr)
    configure_logging(access_log=not args.quiet)  # only now: a refused start leaves the process's logging alone
    # The first stdout line is the URL, so scripts can start the server with --port 0 and read where it listens.
    print(server.url, flush=True)
    mode = "read-only" if args.read_only else "writes need a token" if tokens else "open"
    print(
        f"hf-tts hub: serving {server.store.root} at {server.url} ({mode}); export HF_ENDPOINT={server.url}",
        file=sys.stderr,
        flush=True,
    )
    # Ctrl-C or SIGTERM: uvicorn shuts down gracefully, then re-raises the signal, which is a normal stop here.
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    print("hf-tts hub: stopped", file=sys.stderr)
    return 0
