"""Vocabulary extension for fine-tuning on a new language (upstream F5-TTS's `expand_model_embeddings`).

New tokens are appended to the end of the vocab, so every existing token keeps its id, and the text-embedding table
(`backbone.text_embed.text_embed`, one filler row 0 + one row per token) grows by one row per new token. As upstream,
the new rows are standard-normal draws from a generator seeded with 666; the old rows are untouched.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hf_tts.errors import CheckpointMismatchError, InputError
from hf_tts.tokenization_f5 import F5Tokenizer

logger = logging.getLogger(__name__)

UPSTREAM_EXTENSION_SEED = 666
TEXT_EMBEDDING_PATH = "backbone.text_embed.text_embed"


def _text_embedding(model: nn.Module) -> nn.Embedding:
    try:
        embedding = model.get_submodule(TEXT_EMBEDDING_PATH)
    except AttributeError as error:
        raise InputError(
            f"{type(model).__name__} has no text-embedding table at {TEXT_EMBEDDING_PATH}; only F5/E2 models have one"
        ) from error
    if not isinstance(embedding, nn.Embedding):
        raise InputError(f"{TEXT_EMBEDDING_PATH} of {type(model).__name__} is not an nn.Embedding")
    return embedding


def extend_vocabulary(
    model: Any, tokenizer: F5Tokenizer, new_tokens: Iterable[str], *, seed: int = UPSTREAM_EXTENSION_SEED
) -> tuple[F5Tokenizer, list[str]]:
    """Append `new_tokens` (those not in the vocab yet) to the vocab and grow `model`'s text table in place.

    Returns the extended tokenizer and the tokens actually added (in order). `model.config.text_num_embeds` is
    updated so `save_pretrained` / `from_pretrained` round-trip the bigger table.
    """
    if not isinstance(tokenizer, F5Tokenizer):
        raise InputError(f"vocabulary extension needs an F5Tokenizer, got {type(tokenizer).__name__}")
    embedding = _text_embedding(model)
    config = model.config
    if embedding.num_embeddings != config.text_num_embeds + 1:
        raise CheckpointMismatchError(
            f"the text table has {embedding.num_embeddings} rows but config.text_num_embeds is "
            f"{config.text_num_embeds} (expected text_num_embeds + 1 rows)"
        )
    if tokenizer.vocab_size > config.text_num_embeds:
        raise CheckpointMismatchError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but the model embeds only {config.text_num_embeds}; "
            "they do not belong together"
        )
    vocab = tokenizer.get_vocab()
    added: list[str] = []
    for token in new_tokens:
        if not token or "\n" in token:
            raise InputError(f"cannot add the token {token!r}: tokens are non-empty and hold no newline")
        if token not in vocab and token not in added:
            added.append(token)
    if not added:
        return tokenizer, []

    tokens = list(tokenizer.convert_ids_to_tokens(list(range(tokenizer.vocab_size)))) + added
    with tempfile.TemporaryDirectory() as folder:
        vocab_file = Path(folder) / "vocab.txt"
        vocab_file.write_text("".join(f"{token}\n" for token in tokens), encoding="utf-8")
        # The tokenizer reads the whole file at construction, so the temporary file may go afterwards.
        extended = F5Tokenizer(str(vocab_file), tokenizer_type=tokenizer.tokenizer_type)

    rows_needed = len(tokens) + 1
    new_rows = rows_needed - embedding.num_embeddings
    if new_rows > 0:
        old = embedding.weight.detach()
        generator = torch.Generator().manual_seed(seed)
        appended = torch.randn(new_rows, old.shape[1], generator=generator).to(old.dtype)
        embedding.weight = nn.Parameter(
            torch.cat([old, appended.to(old.device)]), requires_grad=embedding.weight.requires_grad
        )
        embedding.num_embeddings = rows_needed
        config.text_num_embeds = rows_needed - 1
    logger.info("vocab extended by %d tokens to %d: %s", len(added), len(tokens), "".join(added)[:80])
    return extended, added


__all__ = ["UPSTREAM_EXTENSION_SEED", "extend_vocabulary"]
