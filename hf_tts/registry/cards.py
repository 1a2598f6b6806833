"""README front matter for listings and model info: parsed with the package's safe YAML loader (no anchors or
aliases, so a 1 KB alias bomb stays 1 KB; bounded size and depth). A README whose metadata cannot be read has none:
the repo stays usable, it just lists without tags."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

MAX_CARD_BYTES = 1 << 20
FRONT_MATTER = re.compile(r"^---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(\r?\n|$)", re.DOTALL)


def front_matter(text: str) -> str | None:
    match = FRONT_MATTER.match(text)
    return match.group(1) if match else None


def parse_card_text(text: str, source: str = "README.md") -> dict[str, Any]:
    """The metadata mapping of a model card, or {} when it has none or it is not valid."""
    from hf_tts.errors import InputError
    from hf_tts.file_utils import load_yaml

    block = front_matter(text)
    if block is None:
        return {}
    try:
        data = load_yaml(block, source)
    except InputError:
        return {}
    return data if isinstance(data, dict) else {}


def read_card(path: Path) -> dict[str, Any]:
    """The metadata of a README blob; only its first `MAX_CARD_BYTES` are read."""
    with open(path, "rb") as stream:
        head = stream.read(MAX_CARD_BYTES + 1)
    if len(head) > MAX_CARD_BYTES:
        head = head[:MAX_CARD_BYTES]
    return parse_card_text(head.decode("utf-8", errors="replace"))


def card_strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


def card_tags(card: dict[str, Any]) -> list[str]:
    """The tags the Hub derives from a card: its `tags`, the library, the pipeline tag, `license:X`, languages,
    `dataset:X`, `base_model:X` (what `list_models(filter=...)` matches against)."""
    tags = card_strings(card.get("tags"))
    tags += card_strings(card.get("library_name")) + card_strings(card.get("pipeline_tag"))
    tags += [f"license:{item}" for item in card_strings(card.get("license"))]
    tags += card_strings(card.get("language"))
    tags += [f"dataset:{item}" for item in card_strings(card.get("datasets"))]
    tags += [f"base_model:{item}" for item in card_strings(card.get("base_model"))]
    seen: dict[str, None] = {}
    for tag in tags:
        seen.setdefault(tag, None)
    return list(seen)
