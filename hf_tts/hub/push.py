"""Pushing a model folder to a Hub (the real one or the package's local registry) in one commit, card included.

`push_folder` creates the repo if needed, and uploads every file of the folder plus its `README.md` (the generated
model card, with the usage snippet pointed at the repo id) in a single commit, so the repo never shows weights
without their card or a card without its weights. The endpoint is `HF_ENDPOINT` (read by huggingface_hub).
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi

from hf_tts.errors import InputError
from hf_tts.hub.cards import kind_for_config, render_model_card, retarget_model_card


def _folder_files(folder: Path) -> list[Path]:
    """Files to upload: everything but hidden files and folders (caches, editor files, staging leftovers)."""
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            files.append(path)
    return files


def _card_text(folder: Path, repo_id: str) -> str:
    """The folder's README pointed at `repo_id`; a card is generated from `config.json` when the folder has none."""
    readme = folder / "README.md"
    if readme.is_file():
        return retarget_model_card(readme.read_text(encoding="utf-8"), repo_id)
    if not (folder / "config.json").is_file():
        raise InputError(f"{folder} has neither README.md nor config.json; write a model card first")
    from transformers import AutoConfig

    import hf_tts  # noqa: F401  (registers the hf_tts model types so AutoConfig knows them)

    config = AutoConfig.from_pretrained(folder)
    return str(render_model_card(kind=kind_for_config(config), config=config, model_id=repo_id))


def validate_push_target(repo_id: str | None, token: str | None = None) -> None:
    """Check a push target before any work is done, so a long merge or fine-tune never ends in a refused push:
    the repo id's syntax, and that a token is available when the endpoint is the public Hub (a local registry
    decides itself whether writes need one). `repo_id=None` (no push) passes."""
    if repo_id is None:
        return
    from huggingface_hub import constants, get_token
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise InputError(f"invalid push target {repo_id!r}: {str(error).splitlines()[0]}") from None
    public_hub = constants.ENDPOINT.rstrip("/") == "https://huggingface.co"
    if public_hub and not (token or get_token()):
        raise InputError(
            f"pushing to {repo_id} on {constants.ENDPOINT} needs a token: run `hf auth login`, set HF_TOKEN, or pass "
            "--token (for a local registry, set HF_ENDPOINT to its URL)"
        )


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    token: str | None = None,
    parent_commit: str | None = None,
    create_pr: bool = False,
) -> CommitInfo:
    """Upload `folder` to `repo_id` (created if missing; `revision` is a branch, created from main if missing) in
    one commit with its model card. `parent_commit` makes the push fail instead of landing on top of a commit it did
    not see. Returns huggingface_hub's `CommitInfo` (`.oid` is the new commit)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"cannot push {folder}: it is not a folder")
    files = [path for path in _folder_files(folder) if path.relative_to(folder).as_posix() != "README.md"]
    if not files:
        raise InputError(f"cannot push {folder}: it has no files")
    operations = [CommitOperationAdd(path.relative_to(folder).as_posix(), path) for path in files]
    operations.append(CommitOperationAdd("README.md", _card_text(folder, repo_id).encode("utf-8")))

    from hf_tts import __version__

    api = HfApi(token=token, library_name="hf-tts", library_version=__version__)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision is not None and revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    return api.create_commit(
        repo_id,
        operations,
        commit_message=commit_message or f"Upload {folder.absolute().name} with hf_tts {__version__}",
        commit_description=commit_description,
        revision=revision,
        parent_commit=parent_commit,
        create_pr=create_pr,
    )


__all__ = ["push_folder", "validate_push_target"]
