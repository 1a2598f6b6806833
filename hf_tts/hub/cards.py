"""Model cards: every folder the package writes gets a `README.md` rendered from `model_cards/<kind>.md.j2`.

The front matter goes through `huggingface_hub.ModelCardData` (so the Hub reads `library_name`, `pipeline_tag`,
`tags`, `base_model`, ...); the body comes from the package's Jinja templates, which share `_base.md.j2`
(architecture table, flags, provenance, usage snippet). The usage snippet starts with one `model_id = "..."` line;
`retarget_model_card` points it at the Hub repo when a folder is pushed, so the snippet on the Hub runs as written.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData
from transformers import PreTrainedConfig

from hf_tts.errors import InputError
from hf_tts.file_utils import sha256_file

LIBRARY_NAME = "hf-tts"

# kind -> (pipeline_tag, tags). "merge" and "finetune" take their family tags from the config's model_type.
_KIND_METADATA: dict[str, tuple[str, list[str]]] = {
    "f5": ("text-to-speech", ["f5-tts", "text-to-speech", "flow-matching"]),
    "e2": ("text-to-speech", ["e2-tts", "text-to-speech", "flow-matching"]),
    "vocos": ("audio-to-audio", ["vocos", "vocoder"]),
    # The Hub has no audio-to-motion task; "other" is its catch-all pipeline tag.
    "cfg_motion": ("other", ["audio-to-motion", "diffusion", "classifier-free-guidance"]),
    "finetune": ("text-to-speech", ["finetune", "text-to-speech"]),
    "merge": ("text-to-speech", ["merge", "text-to-speech"]),
    # A merge of a model the package does not define (any transformers model, bare safetensors files): the pipeline
    # tag and library come from the sources (see `source_card_metadata`).
    "merge_generic": (None, ["merge"]),
}
# transformers' auto-class mappings (model type -> class name) and the Hub pipeline tag of their task, most specific
# first: a class found in one of them tells the task of a config's `architectures[0]`.
_TASK_MAPPINGS = (
    ("MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES", "automatic-speech-recognition"),
    ("MODEL_FOR_CTC_MAPPING_NAMES", "automatic-speech-recognition"),
    ("MODEL_FOR_TEXT_TO_SPECTROGRAM_MAPPING_NAMES", "text-to-speech"),
    ("MODEL_FOR_TEXT_TO_WAVEFORM_MAPPING_NAMES", "text-to-speech"),
    ("MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES", "audio-classification"),
    ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "text-generation"),
    ("MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES", "text2text-generation"),
    ("MODEL_FOR_MASKED_LM_MAPPING_NAMES", "fill-mask"),
    ("MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES", "text-classification"),
    ("MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES", "token-classification"),
    ("MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES", "image-classification"),
    ("MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES", "image-text-to-text"),
    ("MODEL_MAPPING_NAMES", "feature-extraction"),
)
_FAMILY_TAGS: dict[str, str] = {
    "hf_tts_f5": "f5-tts",
    "hf_tts_e2": "e2-tts",
    "hf_tts_vocos": "vocos",
    "hf_tts_cfg_motion": "audio-to-motion",
}
# Families whose task is not the kind's default (a merged or fine-tuned motion model is not text-to-speech).
_FAMILY_PIPELINE_TAGS: dict[str, str] = {"hf_tts_vocos": "audio-to-audio", "hf_tts_cfg_motion": "other"}
_BASE_MODEL_RELATIONS = ("adapter", "merge", "quantized", "finetune")
# Config keys shown under "Flags" rather than in the architecture table.
_FLAG_KEYS = ("architecture", "init_adaln_zero", "freeze_quantizer")
# `model_id = "..."` is the first line of every card's usage snippet (see _base.md.j2; a card with alternative
# snippets has one such line in each).
_MODEL_ID_LINE = re.compile(r'^model_id = "(?P<model_id>[^"\n]*)"$', re.MULTILINE)


def model_cards_dir() -> Path:
    """Folder holding the `*.md.j2` templates: installed as `hf_tts/model_cards` in a wheel, or the top-level
    `model_cards/` of a source checkout (editable installs map only the `hf_tts` package itself)."""
    installed = Path(str(resources.files("hf_tts"))) / "model_cards"
    if installed.is_dir():
        return installed
    checkout = Path(__file__).resolve().parents[2] / "model_cards"
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"model card templates not found in {installed} or {checkout}; reinstall hf_tts")


def available_kinds() -> list[str]:
    """Card kinds that have a template (`model_cards/<kind>.md.j2`)."""
    return sorted(path.name[: -len(".md.j2")] for path in model_cards_dir().glob("[!_]*.md.j2"))


def _architecture_rows(config: PreTrainedConfig) -> list[tuple[str, Any]]:
    """(field, value) of every model field of `config`: the transformers bookkeeping keys and the flags are left out.
    Sub-configs (a carried vocoder, an audio encoder) become dotted rows (`vocoder_config.dim`), one value a row."""
    bookkeeping = set(PreTrainedConfig().to_dict())

    def rows(fields: Mapping[str, Any], prefix: str) -> list[tuple[str, Any]]:
        found = []
        for key, value in fields.items():
            # the top-level flags have their own table; a sub-config's init/freeze flags say nothing about it
            if (
                key in bookkeeping
                or key.startswith("_")
                or (key in _FLAG_KEYS and (not prefix or key != "architecture"))
            ):
                continue
            if isinstance(value, Mapping):
                found += rows(value, f"{prefix}{key}.")
            else:
                found.append((f"{prefix}{key}", value))
        return found

    return rows(config.to_dict(), "")


def _flags(config: PreTrainedConfig) -> list[tuple[str, Any]]:
    flags = [(key, getattr(config, key)) for key in _FLAG_KEYS if hasattr(config, key)]
    if not getattr(type(config), "has_quantizer", False):
        flags = [(key, value) for key, value in flags if key != "freeze_quantizer"]
    return flags


def _describe_sources(sources: Iterable[str | os.PathLike | Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """Provenance entries `{"name", "sha256", ...}`: a path is hashed here; a mapping (e.g. a Hub id with its own
    fields such as a merge weight) is kept as given."""
    described = []
    for source in sources or ():
        if isinstance(source, Mapping):
            if "name" not in source:
                raise InputError(f"model card source {dict(source)!r} has no 'name'; give a file path or a name")
            described.append(dict(source))
            continue
        path = Path(source)
        if not path.is_file():
            raise InputError(f"model card source {path} is not a file; pass the checkpoint that was read")
        described.append({"name": path.name, "sha256": sha256_file(path, cache=True), "size": path.stat().st_size})
    return described


def kind_for_config(config: PreTrainedConfig) -> str:
    """The card kind of a converted or freshly built model of the package (`hf_tts_f5` -> "f5", ...)."""
    model_type = getattr(config, "model_type", "")
    kind = model_type.removeprefix("hf_tts_")
    if not model_type.startswith("hf_tts_") or kind not in available_kinds():
        raise InputError(f"no model card template for model type {model_type!r}; pass kind= explicitly")
    return kind


def _family_tag(config: PreTrainedConfig | None) -> list[str]:
    tag = _FAMILY_TAGS.get(getattr(config, "model_type", ""))
    return [tag] if tag else []


def pipeline_tag_for_architecture(architecture: str | None) -> str | None:
    """The Hub pipeline tag of a transformers class name (`LlamaForCausalLM` -> text-generation), from the auto
    classes' task mappings; None when no mapping lists it."""
    if not architecture:
        return None
    from transformers.models.auto import modeling_auto

    for mapping_name, tag in _TASK_MAPPINGS:
        mapping = getattr(modeling_auto, mapping_name, {})
        for value in mapping.values():
            names = value if isinstance(value, (tuple, list)) else (value,)
            if architecture in names:
                return tag
    return None


def source_card_metadata(folder: str | os.PathLike | None) -> dict[str, Any]:
    """`pipeline_tag`, `library_name`, `license` and `language` of a source folder's own model card (README.md front
    matter), where it has them; empty without a card or with a card that cannot be parsed."""
    if folder is None or not (Path(folder) / "README.md").is_file():
        return {}
    try:
        data = ModelCard.load(Path(folder) / "README.md").data.to_dict()
    except (ValueError, OSError, UnicodeDecodeError):
        return {}  # a hand-written README without valid front matter says nothing machine-readable
    return {key: data[key] for key in ("pipeline_tag", "library_name", "license", "language") if data.get(key)}


def render_model_card(
    *,
    kind: str,
    config: PreTrainedConfig | None = None,
    base_model: str | list[str] | None = None,
    base_model_relation: str | None = None,
    license: str | None = None,
    language: str | list[str] | None = None,
    sources: Iterable[str | os.PathLike | Mapping[str, Any]] | None = None,
    model_id: str = "./model",
    tags: Iterable[str] | None = None,
    extra_context: Mapping[str, Any] | None = None,
    library_name: str | None = None,
    pipeline_tag: str | None = None,
) -> ModelCard:
    """Render `model_cards/<kind>.md.j2` into a `ModelCard`.

    `library_name` and `pipeline_tag` override the kind's (a generic merge takes them from its sources).

    `config` fills the architecture table and the flags; `sources` are the files the weights came from (hashed) or
    mappings with at least a `name`; `model_id` is what the usage snippet loads (a local path or a Hub repo id);
    `tags` are added to the kind's tags; `extra_context` reaches the template as is (e.g. a merge recipe).
    """
    from hf_tts import __version__

    kinds = available_kinds()
    if kind not in kinds:
        raise InputError(f"unknown model card kind {kind!r}; templates exist for: {', '.join(kinds)}")
    if base_model_relation is not None and base_model_relation not in _BASE_MODEL_RELATIONS:
        raise InputError(
            f"base_model_relation must be one of {', '.join(_BASE_MODEL_RELATIONS)}, got {base_model_relation!r}"
        )
    if base_model_relation is not None and not base_model:
        raise InputError(f"base_model_relation={base_model_relation!r} needs base_model (the parent repo ids)")
    kind_pipeline_tag, kind_tags = _KIND_METADATA.get(kind, (None, []))
    if pipeline_tag is None:
        pipeline_tag = _FAMILY_PIPELINE_TAGS.get(getattr(config, "model_type", None), kind_pipeline_tag)
    metadata: dict[str, Any] = {}
    if base_model_relation is not None:
        metadata["base_model_relation"] = base_model_relation
    card_data = ModelCardData(
        library_name=library_name or LIBRARY_NAME,
        pipeline_tag=pipeline_tag,
        tags=[LIBRARY_NAME, *_family_tag(config), *kind_tags, *(tags or ())],
        base_model=base_model,
        license=license,
        language=language,
        **metadata,
    )
    context: dict[str, Any] = {
        "kind": kind,
        "model_id": model_id,
        "config": config,
        "model_type": getattr(config, "model_type", None),
        "architecture_rows": _architecture_rows(config) if config is not None else [],
        "flags": _flags(config) if config is not None else [],
        "base_models": [base_model] if isinstance(base_model, str) else list(base_model or []),
        "base_model_relation": base_model_relation,
        "sources": _describe_sources(sources),
        "package_version": __version__,
        "library_name": library_name or LIBRARY_NAME,
        "pipeline_tag": pipeline_tag,
        **(extra_context or {}),
    }
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(model_cards_dir())),
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
    )
    text = environment.get_template(f"{kind}.md.j2").render(card_data=card_data.to_yaml(), **context)
    return ModelCard(text)


def write_model_card(
    folder: str | os.PathLike,
    *,
    kind: str,
    config: PreTrainedConfig | None = None,
    base_model: str | list[str] | None = None,
    base_model_relation: str | None = None,
    license: str | None = None,
    language: str | list[str] | None = None,
    sources: Iterable[str | os.PathLike | Mapping[str, Any]] | None = None,
    model_id: str | None = None,
    tags: Iterable[str] | None = None,
    extra_context: Mapping[str, Any] | None = None,
) -> Path:
    """Render the card (see `render_model_card`) and write it to `folder/README.md` atomically; returns the path.

    Without `config`, the folder's `config.json` is read when there is one. `model_id` defaults to the folder as a
    path relative to its parent (`./<name>`), which `hf-tts push` / `push_folder` replace with the repo id.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"cannot write a model card: {folder} is not a folder")
    if config is None and (folder / "config.json").is_file():
        from transformers import AutoConfig

        import hf_tts  # noqa: F401  (registers the hf_tts model types so AutoConfig knows them)

        config = AutoConfig.from_pretrained(folder)
    card = render_model_card(
        kind=kind,
        config=config,
        base_model=base_model,
        base_model_relation=base_model_relation,
        license=license,
        language=language,
        sources=sources,
        model_id=model_id or f"./{folder.absolute().name}",
        tags=tags,
        extra_context=extra_context,
    )
    target = folder / "README.md"
    handle, staging = tempfile.mkstemp(prefix=".README.md.", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(str(card))
        os.replace(staging, target)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    return target


def retarget_model_card(text: str, model_id: str) -> str:
    """Point a rendered card at `model_id` (e.g. the repo id it is pushed to): its usage snippet, and its `# heading`
    when that names the snippet's old model id (the local `./folder` the card was written for). Text without the
    package's snippet (a hand-written README) is returned unchanged."""
    match = _MODEL_ID_LINE.search(text)
    if match is None:
        return text
    old_heading = re.compile(rf"^# {re.escape(match.group('model_id'))}$", re.MULTILINE)
    text = _MODEL_ID_LINE.sub(lambda _: f'model_id = "{model_id}"', text)
    return old_heading.sub(lambda _: f"# {model_id}", text, count=1)


def usage_snippet(text: str) -> str:
    """The first ```python block of a rendered card: the usage snippet."""
    match = re.search(r"```python\n(.*?)```", text, re.DOTALL)
    if match is None:
        raise InputError("the model card has no ```python usage snippet")
    return match.group(1)


__all__ = [
    "LIBRARY_NAME",
    "available_kinds",
    "kind_for_config",
    "model_cards_dir",
    "pipeline_tag_for_architecture",
    "render_model_card",
    "retarget_model_card",
    "source_card_metadata",
    "usage_snippet",
    "write_model_card",
]
