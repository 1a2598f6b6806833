"""`hf-tts push DIR REPO_ID`: upload a model folder with its model card to a Hub in one commit.

The Hub is `HF_ENDPOINT` (for example the package's own registry: `hf-tts hub serve`).
"""

from __future__ import annotations

import argparse

from hf_tts.errors import InputError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "push",
        help="upload a model folder and its model card to a Hub (HF_ENDPOINT) in one commit",
        description="Upload every file of DIR plus its README.md model card (generated from config.json when "
        "missing) to REPO_ID in one commit. The Hub is $HF_ENDPOINT (default https://huggingface.co).",
    )
    parser.add_argument("folder", metavar="DIR", help="folder written by hf-tts (config.json, weights, README.md)")
    parser.add_argument("repo_id", metavar="REPO_ID", help="namespace/name")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--revision", help="branch to push to (created from main when missing; default: main)")
    parser.add_argument("--commit-message", help="commit title (default: 'Upload DIR with hf_tts VERSION')")
    parser.add_argument("--token", help="access token (default: HF_TOKEN or the saved login)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError

    from hf_tts.hub.push import push_folder, validate_push_target

    validate_push_target(args.repo_id, args.token)  # before the folder is read or anything is sent
    try:
        commit = push_folder(
            args.folder,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            commit_message=args.commit_message,
            token=args.token,
        )
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        reason = (error.server_message or str(error)).strip().splitlines()[0]
        raise InputError(
            f"{constants.ENDPOINT} refused the push to {args.repo_id} (HTTP {status}): {reason}"
        ) from error
    except httpx2.TransportError as error:
        raise InputError(f"cannot reach the Hub at {constants.ENDPOINT}: {error}") from error
    print(
        f"pushed {args.folder} to {constants.ENDPOINT}/{args.repo_id} (revision {args.revision or 'main'}), commit {commit.oid}"
    )
    return 0
