"""`hf-tts hub serve`: the local Hub-compatible model registry (see `hf_tts/hub/server.py`)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from hf_tts.errors import InputError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("hub", help="the local Hub-compatible model registry")
    actions = parser.add_subparsers(dest="hub_command", metavar="ACTION", parser_class=type(parser))
    actions.required = True
    serve = actions.add_parser(
        "serve",
        help="serve a folder as a Hub for huggingface_hub / transformers (point HF_ENDPOINT at it)",
        description="Serve ROOT as a Hub: push with push_to_hub / hf-tts push / upload_folder and load with "
        "from_pretrained / pipeline after `export HF_ENDPOINT=<printed url>`. Stop with Ctrl-C.",
    )
    serve.add_argument("--root", required=True, help="registry folder (created if missing)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=0, help="port (default: 0, a free port; the URL is printed)")
    serve.add_argument(
        "--token",
        default=os.environ.get("HF_TTS_HUB_TOKEN"),
        help="require this bearer token for writes (default: $HF_TTS_HUB_TOKEN; none: writes are open)",
    )
    serve.add_argument("--read-only", action="store_true", help="refuse every write")
    serve.add_argument("--quiet", action="store_true", help="do not log requests to stderr")
    serve.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from hf_tts.hub.server import LocalHubServer

    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be in 0..65535, got {args.port}")
    try:
        server = LocalHubServer(
            args.root, args.host, args.port, token=args.token, read_only=args.read_only, log_requests=not args.quiet
        )
    except OSError as error:
        raise InputError(f"cannot serve on {args.host}:{args.port}: {error.strerror or error}") from error
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback and args.token is None and not args.read_only:
        print(f"warning: {args.host} is reachable from other machines and writes need no token", file=sys.stderr)
    # The first stdout line is the URL, so scripts can start the server with --port 0 and read where it listens.
    print(server.url, flush=True)
    print(
        f"hf-tts hub: serving {server.store.root} at {server.url} "
        f"({'read-only' if args.read_only else 'writes need the token' if args.token else 'open'}); "
        f"export HF_ENDPOINT={server.url}",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
