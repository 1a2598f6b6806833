"""Is a model argument a local folder or a Hub repo id? Decided before anything is loaded.

`from_pretrained("./my-modle")` with a typo is treated as a repo id and retried against the Hub for tens of seconds
before it fails with a message about the network. A path that looks local (it starts with `./`, `../`, `/` or `~`,
has more than one `/`, or its first component exists here) is reported missing at once instead, naming the part of
it that does exist. Messages about the Hub name the endpoint, and HF_ENDPOINT when it chose it. Light: no torch, no
transformers, no huggingface_hub.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from hf_tts.errors import InputError

# huggingface_hub's repo id grammar (validate_repo_id), without importing it: [namespace/]name.
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[\w][\w.-]{0,95}$")
_DEFAULT_ENDPOINT = "https://huggingface.co"


def hub_endpoint_label() -> str:
    """Where Hub ids resolve, for messages: `HF_ENDPOINT=<url>` when the variable sets it, else the public Hub."""
    endpoint = os.environ.get("HF_ENDPOINT", "").strip()
    if endpoint:
        return f"HF_ENDPOINT={endpoint.rstrip('/')}"
    return f"the public Hub ({_DEFAULT_ENDPOINT}; set HF_ENDPOINT for another one)"


def looks_local(source: str) -> bool:
    """Whether `source` can only mean a path on this machine (never a repo id)."""
    if source.startswith(("./", "../", "/", "~", ".\\")) or source in (".", "..") or source.count("/") > 1:
        return True
    first = source.split("/", 1)[0]
    return "/" in source and first not in ("", ".") and Path(first).expanduser().is_dir()


def _deepest_existing_parent(path: Path) -> Path | None:
    for parent in path.parents:
        if parent != Path(".") and parent.exists():
            return parent
    return None


def check_model_source(source: str | os.PathLike, what: str = "model") -> str:
    """`source` as given if it is an existing folder or reads as a Hub repo id; an InputError right away for a
    missing local path, a file where a folder is needed, or text that is neither. `what` names the argument."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise InputError(f"{what} {text} is a file; give the model folder that holds config.json, or a Hub repo id")
    if looks_local(text) or not _REPO_ID.match(text):
        parent = _deepest_existing_parent(path)
        near = f"; {parent} exists, check the name after it" if parent is not None and str(parent) != "/" else ""
        if not looks_local(text):
            raise InputError(f"{what} {text!r} is neither an existing folder nor a Hub repo id (namespace/name){near}")
        hub_hint = ""
        if text.count("/") == 1 and not text.startswith(("./", "../", "/", "~")):
            hub_hint = f" (for the Hub repo {text}, run where no folder {text.split('/')[0]} is)"
        raise InputError(f"{what} folder {text} does not exist{near}{hub_hint}")
    return text


__all__ = ["check_model_source", "hub_endpoint_label", "looks_local"]
