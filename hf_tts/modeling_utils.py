"""The model base every `hf_tts` model extends.

One place for behaviour all families share on top of `transformers.PreTrainedModel`:
- a size check before anything is built: the parameter and buffer count a config implies is estimated from the
  config alone (`estimate_model_size`) and a model above `MAX_MODEL_PARAMETERS` is refused unless allowed
  (`allow_large_models()`, `--allow-large`), so a 1 KB `config.json` claiming `depth: 1000000` is a clean error, not
  an out-of-memory kill;
- the Hub push uploads the package's generated model card in the same commit as the weights (transformers' own
  `push_to_hub` would write its default `library_name: transformers` README instead).
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from huggingface_hub import CommitInfo
from transformers import PreTrainedModel

from hf_tts.configuration_utils import HfTtsConfig
from hf_tts.errors import InputError

# The most parameters plus buffer elements a model may have unless large models are allowed: 1e9, 4 GB in float32.
# The largest released model the package converts (F5-TTS Base with its Vocos vocoder) has 0.35e9; a config above
# this is almost certainly damaged or hostile (e.g. `depth: 1000000`).
MAX_MODEL_PARAMETERS = 1_000_000_000

_large_models_allowed: contextvars.ContextVar[bool] = contextvars.ContextVar("hf_tts_large_models", default=False)
# Set while `estimate_model_size` builds its small copies, whose own size checks would recurse.
_estimating: contextvars.ContextVar[bool] = contextvars.ContextVar("hf_tts_estimating", default=False)


@dataclass(frozen=True)
class ModelSize:
    """What a config builds: `parameters` and `buffers` are element counts (exact, see `estimate_model_size`)."""

    parameters: int
    buffers: int

    @property
    def elements(self) -> int:
        return self.parameters + self.buffers

    @property
    def float32_bytes(self) -> int:
        return 4 * self.elements


@contextlib.contextmanager
def allow_large_models(allowed: bool = True) -> Iterator[None]:
    """Within this block, models above `MAX_MODEL_PARAMETERS` may be built (the Python face of `--allow-large`).
    `allowed=False` changes nothing (an enclosing block's permission stays), so callers can pass their flag."""
    token = _large_models_allowed.set(allowed or _large_models_allowed.get())
    try:
        yield
    finally:
        _large_models_allowed.reset(token)


def _layer_paths(config: Any) -> list[tuple[Any, str, int, int]]:
    """(owner config, field, smallest value, step) of every layer-count field `config` has, sub-configs included."""
    found = []
    for path, smallest, step in getattr(type(config), "layer_count_fields", ()):
        *parents, name = path.split(".")
        owner = config
        for parent in parents:
            owner = getattr(owner, parent, None)
        if owner is not None and isinstance(getattr(owner, name, None), int):
            found.append((path, smallest, step))
    return found


def _set_path(config: Any, path: str, value: int) -> None:
    *parents, name = path.split(".")
    owner = config
    for parent in parents:
        owner = getattr(owner, parent)
    object.__setattr__(owner, name, value)  # a small copy for counting: the type is right, rules are not re-run


def _get_path(config: Any, path: str) -> int:
    value = config
    for name in path.split("."):
        value = getattr(value, name)
    return value


def _count_on_meta(model_class: type[torch.nn.Module], config: Any) -> tuple[int, int]:
    token = _estimating.set(True)
    try:
        with torch.device("meta"):
            model = model_class(config)
    finally:
        _estimating.reset(token)
    return sum(p.numel() for p in model.parameters()), sum(b.numel() for b in model.buffers())


def estimate_model_size(model_class: type[torch.nn.Module], config: Any) -> ModelSize:
    """Parameters and buffer elements `model_class(config)` will have, without building it at full size.

    The config's layer-count fields (`layer_count_fields`: depth, text conv layers, vocoder layers, quantizer levels,
    an audio encoder's hidden layers) are set to their smallest values and to one step more, copies are built on
    the meta device (no memory, ~10 ms each), and the count is extrapolated: every layer of a stack has the same
    size, so the result is exact (tests compare it with built models' `numel`).
    """
    paths = _layer_paths(config)
    small = copy.deepcopy(config)
    for path, smallest, _ in paths:
        _set_path(small, path, smallest)
    base_parameters, base_buffers = _count_on_meta(model_class, small)
    parameters, buffers = base_parameters, base_buffers
    for path, smallest, step in paths:
        steps, remainder = divmod(_get_path(config, path) - smallest, step)
        if remainder:
            raise InputError(f"{path} must be {smallest} plus a multiple of {step}, got {_get_path(config, path)}")
        if steps == 0:
            continue
        grown = copy.deepcopy(small)
        _set_path(grown, path, smallest + step)
        grown_parameters, grown_buffers = _count_on_meta(model_class, grown)
        parameters += steps * (grown_parameters - base_parameters)
        buffers += steps * (grown_buffers - base_buffers)
    return ModelSize(parameters=parameters, buffers=buffers)


def check_model_size(
    model_class: type[torch.nn.Module], config: Any, *, allow_large: bool = False, source: str | None = None
) -> ModelSize:
    """Raise InputError when `model_class(config)` would exceed `MAX_MODEL_PARAMETERS` (parameters + buffers)
    unless `allow_large` or inside `allow_large_models()`; returns the estimate. `source` names the config's file."""
    size = estimate_model_size(model_class, config)
    if size.elements > MAX_MODEL_PARAMETERS and not (allow_large or _large_models_allowed.get()):
        where = f"{source}: " if source else ""
        raise InputError(
            f"{where}this {type(config).__name__} describes a model of {size.elements:.3g} parameters and buffers "
            f"({size.float32_bytes / 2**30:.1f} GiB in float32), above the {MAX_MODEL_PARAMETERS:.0e} limit; check "
            "the config (a damaged or hostile file?) or pass --allow-large (allow_large=True) if it is meant to be "
            "this big"
        )
    return size


def default_file_modes(folder: str | os.PathLike, written_since_ns: int) -> None:
    """Give the files written into `folder` since `written_since_ns` (time.time_ns()) the mode an ordinary new file
    gets (0o666 minus the umask). safetensors and temporary-file writers create private 0600 files, which left
    converted folders unreadable to the group that shares them; files older than the write are not touched."""
    umask = os.umask(0)
    os.umask(umask)
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime_ns >= written_since_ns:
                os.chmod(entry.path, 0o666 & ~umask)


class HfTtsPreTrainedModel(PreTrainedModel):
    config_class = HfTtsConfig
    base_model_prefix = "model"

    def __init__(self, config: HfTtsConfig, *args: Any, **kwargs: Any):
        # Before any submodule exists: a config that implies an enormous model is refused here, whatever built it
        # (AutoModel.from_config, from_pretrained on the meta device, a converter).
        if not _estimating.get():
            check_model_size(type(self), config, source=getattr(config, "name_or_path", None) or None)
        super().__init__(config, *args, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """transformers' `save_pretrained`, with the written files given ordinary permissions (see
        `default_file_modes`)."""
        # Filesystem timestamps can trail time.time_ns() by a tick: start a little earlier.
        started = time.time_ns() - 1_000_000_000
        super().save_pretrained(save_directory, *args, **kwargs)
        default_file_modes(save_directory, started)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str = "50GB",
        tags: str | list[str] | None = None,
    ) -> CommitInfo:
        """Upload the model to `repo_id` with its generated model card, in one commit.

        Same keywords as `transformers.PreTrainedModel.push_to_hub`; `revision` is a branch (created from main when
        missing). The card is rendered from `model_cards/<kind>.md.j2` for this model's config, with `tags` and the
        model's `model_tags` added to its front matter.
        """
        from hf_tts.hub.cards import kind_for_config, write_model_card
        from hf_tts.hub.push import push_folder

        extra_tags = [*(self.model_tags or []), *([tags] if isinstance(tags, str) else tags or [])]
        with tempfile.TemporaryDirectory(prefix="hf-tts-push-") as folder:
            self.save_pretrained(folder, max_shard_size=max_shard_size)
            write_model_card(
                folder, kind=kind_for_config(self.config), config=self.config, model_id=repo_id, tags=extra_tags
            )
            return push_folder(
                folder,
                repo_id,
                private=bool(private),
                revision=revision,
                commit_message=commit_message or f"Upload {type(self).__name__}",
                commit_description=commit_description,
                token=token,
                create_pr=create_pr,
            )
