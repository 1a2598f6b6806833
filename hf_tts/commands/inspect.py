"""`hf-tts inspect DIR_OR_REPO`: what a model folder or Hub repo holds, without loading it.

Family, architecture flags, sizes, the vocoder it carries, the tokenizer, the card's summary, and the parameter count
read from the safetensors headers (no weights are read, so a multi-GB model is inspected in a blink). A Hub repo's
headers come through HTTP range requests (`huggingface_hub.HfApi.get_safetensors_metadata`). No torch, no
transformers.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_tts.errors import InputError

FAMILIES = {
    "hf_tts_f5": "F5-TTS (DiT flow-matching text-to-speech)",
    "hf_tts_e2": "E2-TTS (UNetT flow-matching text-to-speech)",
    "hf_tts_vocos": "Vocos vocoder (mel -> waveform)",
    "hf_tts_cfg_motion": "CFG motion model (audio -> face/body motion)",
}
# Per model_type: (flags: fields that choose behaviour, sizes: fields that set dimensions).
_FIELDS = {
    "hf_tts_f5": (
        (
            "text_mask_padding",
            "qk_norm",
            "pe_attn_head",
            "attn_mask_enabled",
            "long_skip_connection",
            "init_adaln_zero",
        ),
        ("dim", "depth", "heads", "dim_head", "ff_mult", "text_dim", "conv_layers", "mel_dim", "text_num_embeds"),
    ),
    "hf_tts_e2": (
        ("text_mask_padding", "qk_norm", "pe_attn_head", "attn_mask_enabled", "skip_connect_type"),
        ("dim", "depth", "heads", "dim_head", "ff_mult", "text_dim", "conv_layers", "mel_dim", "text_num_embeds"),
    ),
    "hf_tts_vocos": ((), ("n_mels", "sampling_rate", "hop_length", "n_fft", "dim", "intermediate_dim", "num_layers")),
    "hf_tts_cfg_motion": (
        ("use_keyframes", "post_conv", "init_adaln_zero", "init_xavier", "freeze_quantizer", "freeze_audio_encoder"),
        ("nfeats", "latent_dim", "layers", "heads", "ff_size", "cond_feature_dim", "cond_encoder_layers", "fps"),
    ),
}
_MAX_TEXT_BYTES = 1 << 20  # config.json / README.md / tokenizer files read here; real ones are a few kB
_CARD_KEYS = ("license", "base_model", "pipeline_tag", "library_name", "language", "tags")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect",
        description="Describe a model folder or Hub repo (HF_ENDPOINT) without loading its weights: family, "
        "architecture and flags, sizes, parameter count and dtypes (from the safetensors headers), the vocoder it "
        "carries, its tokenizer and the model card's summary.",
    )
    parser.add_argument("source", metavar="DIR_OR_REPO", help="model folder, or Hub repo id (namespace/name)")
    parser.add_argument("--revision", help="Hub branch, tag or commit (default: main)")
    parser.add_argument("--token", help="Hub access token (default: HF_TOKEN or the saved login)")
    parser.add_argument("--json", action="store_true", help="print the description as JSON")
    parser.set_defaults(func=_run)


@dataclass
class ModelDescription:
    """What `inspect` found; `as_dict()` is the --json output."""

    source: str
    location: str  # "folder" or the Hub endpoint
    config: dict[str, Any]
    files: list[str]
    parameters: dict[str, int] = field(default_factory=dict)  # dtype -> count
    weights_bytes: int | None = None
    vocab_tokens: int | None = None  # lines of vocab.txt
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", "?"))

    def as_dict(self) -> dict[str, Any]:
        flags, sizes = _FIELDS.get(self.model_type, ((), ()))
        return {
            "source": self.source,
            "location": self.location,
            "model_type": self.model_type,
            "family": FAMILIES.get(self.model_type),
            "architecture": self.config.get("architecture"),
            "flags": {name: self.config.get(name) for name in flags if name in self.config},
            "sizes": {name: self.config.get(name) for name in sizes if name in self.config},
            "parameters": sum(self.parameters.values()),
            "parameters_by_dtype": self.parameters,
            "weights_bytes": self.weights_bytes,
            "vocoder": _vocoder_summary(self.config),
            "tokenizer": _tokenizer_summary(self),
            "card": self.card,
            "files": self.files,
        }


def _read_text(path: Path, what: str) -> str:
    if path.stat().st_size > _MAX_TEXT_BYTES:
        raise InputError(f"{what} {path} is larger than {_MAX_TEXT_BYTES >> 20} MB; it is not a model's {path.name}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"{what} {path} is not UTF-8 text ({error.reason} at byte {error.start})") from None


def read_config_json(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(_read_text(path, "config"))
    except (ValueError, RecursionError) as error:
        raise InputError(f"{path} is not valid JSON ({str(error)[:120]})") from None
    if not isinstance(config, dict):
        raise InputError(f"{path} must hold a JSON object, got {type(config).__name__}")
    return config


def summarize_card(text: str) -> dict[str, Any]:
    """The card's metadata that matters at a glance (license, base model, tags, ...), its title and first
    paragraph."""
    from hf_tts.file_utils import load_yaml

    summary: dict[str, Any] = {}
    body = text
    if text.startswith("---\n"):
        end = text.find("\n---", 4)
        if end != -1:
            metadata = load_yaml(text[4:end], "README.md metadata")
            if isinstance(metadata, dict):
                summary.update({key: metadata[key] for key in _CARD_KEYS if key in metadata})
            body = text[end + 4 :]
    paragraph: list[str] = []
    for line in body.splitlines():
        stripped = line.strip()
        if stripped.startswith("# ") and "title" not in summary:
            summary["title"] = stripped[2:].strip()
        elif stripped and not stripped.startswith(("#", "|", "```", "<", "!", "-", "*")):
            paragraph.append(stripped)
        elif paragraph:
            break
    if paragraph:
        first = " ".join(paragraph)
        summary["summary"] = first if len(first) <= 240 else first[:237] + "..."
    return summary


def _count_parameters(headers: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for header in headers:
        for key, entry in header.items():
            if key == "__metadata__":
                continue
            counts[entry["dtype"]] = counts.get(entry["dtype"], 0) + math.prod(entry["shape"])
    return counts


def describe_folder(folder: Path) -> ModelDescription:
    """Describe a local model folder from its config.json, safetensors headers, README.md and tokenizer files."""
    from hf_tts.file_utils import read_safetensors_header

    config_path = folder / "config.json"
    if not config_path.is_file():
        raise InputError(f"{folder} has no config.json; it is not a model folder (hf-tts convert writes one)")
    files = sorted(path.name for path in folder.iterdir() if path.is_file())
    description = ModelDescription(str(folder), "folder", read_config_json(config_path), files)
    weights = sorted(folder.glob("*.safetensors"))
    description.parameters = _count_parameters([read_safetensors_header(path)[0] for path in weights])
    description.weights_bytes = sum(path.stat().st_size for path in weights) if weights else None
    if (folder / "README.md").is_file():
        description.card = summarize_card(_read_text(folder / "README.md", "model card"))
    if (folder / "vocab.txt").is_file():
        description.vocab_tokens = _read_text(folder / "vocab.txt", "vocab").count("\n")
    return description


def describe_repo(repo_id: str, revision: str | None = None, token: str | None = None) -> ModelDescription:
    """Describe a Hub repo: config.json and README.md are downloaded (kB), the weights' headers range-read."""
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from hf_tts.model_source import hub_endpoint_label

    api = HfApi(token=token)
    where = f"{repo_id} on {hub_endpoint_label()}"
    try:
        # One request, no retries (list_repo_files backs off for ~20 s when the endpoint is down); sizes included.
        info = api.model_info(repo_id, revision=revision, files_metadata=True)
        siblings = {sibling.rfilename: sibling.size for sibling in info.siblings or []}
        files = sorted(siblings)
        if "config.json" not in files:
            raise InputError(f"{where} has no config.json; it is not a model repo")
        config = read_config_json(Path(api.hf_hub_download(repo_id, "config.json", revision=revision)))
        description = ModelDescription(repo_id, constants.ENDPOINT, config, files)
        if any(name.endswith(".safetensors") for name in files):
            metadata = api.get_safetensors_metadata(repo_id, revision=revision)
            description.parameters = dict(metadata.parameter_count)
            sizes = [size for name, size in siblings.items() if name.endswith(".safetensors")]
            description.weights_bytes = sum(sizes) if all(size is not None for size in sizes) else None
        if "README.md" in files:
            readme = Path(api.hf_hub_download(repo_id, "README.md", revision=revision))
            description.card = summarize_card(_read_text(readme, "model card"))
        if "vocab.txt" in files:
            vocab = Path(api.hf_hub_download(repo_id, "vocab.txt", revision=revision))
            description.vocab_tokens = _read_text(vocab, "vocab").count("\n")
    except RepositoryNotFoundError:
        raise InputError(
            f"{where}: no such repo (or it is private: pass --token); a local folder needs a path like ./{repo_id}"
        ) from None
    except RevisionNotFoundError:
        raise InputError(f"{where} has no revision {revision!r}") from None
    except EntryNotFoundError as error:
        raise InputError(f"{where}: {str(error).splitlines()[0]}") from None
    except HfHubHTTPError as error:
        raise InputError(f"{where}: {str(error).strip().splitlines()[0]}") from None
    except httpx2.TransportError as error:  # connection refused, DNS, timeouts
        raise InputError(f"cannot reach {hub_endpoint_label()} for {repo_id}: {error}") from None
    return description


def describe(source: str, revision: str | None = None, token: str | None = None) -> ModelDescription:
    """A folder or a repo id, told apart before anything is fetched (`hf_tts.model_source.check_model_source`)."""
    from hf_tts.model_source import check_model_source

    checked = check_model_source(source, "DIR_OR_REPO")
    if Path(checked).is_dir():
        return describe_folder(Path(checked))
    return describe_repo(checked, revision=revision, token=token)


def _vocoder_summary(config: dict[str, Any]) -> str | None:
    vocoder = config.get("vocoder_config")
    if config.get("model_type") not in ("hf_tts_f5", "hf_tts_e2"):
        return None
    if not isinstance(vocoder, dict):
        return "none: the folder gives mel only (hf-tts attach-vocoder adds a Vocos vocoder)"
    return (
        f"{vocoder.get('model_type', '?')} carried in the folder ({vocoder.get('n_mels')} mels, "
        f"{vocoder.get('sampling_rate')} Hz, hop {vocoder.get('hop_length')})"
    )


def _tokenizer_summary(description: ModelDescription) -> str | None:
    config = description.config
    if config.get("model_type") not in ("hf_tts_f5", "hf_tts_e2"):
        return None
    if "vocab.txt" not in description.files:
        return "none (no vocab.txt)"
    count = f"{description.vocab_tokens} tokens, " if description.vocab_tokens is not None else ""
    return (
        f"vocab.txt ({count}{config.get('tokenizer_type', 'pinyin')} mode; model table {config.get('text_num_embeds')})"
    )


def _format_bytes(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


def format_description(info: dict[str, Any]) -> list[str]:
    """Human-readable lines of `ModelDescription.as_dict()`."""
    family = info["family"] or f"not an hf_tts model (model_type {info['model_type']!r})"
    where = "local folder" if info["location"] == "folder" else f"Hub repo on {info['location']}"
    lines = [f"{info['source']} ({where})", f"  family:        {family}"]
    if info["architecture"]:
        lines.append(f"  architecture:  {info['architecture']}")
    if info["flags"]:
        lines.append("  flags:         " + ", ".join(f"{key}={value}" for key, value in info["flags"].items()))
    if info["sizes"]:
        lines.append("  sizes:         " + ", ".join(f"{key} {value}" for key, value in info["sizes"].items()))
    if info["parameters"]:
        dtypes = ", ".join(f"{count:,} {dtype}" for dtype, count in sorted(info["parameters_by_dtype"].items()))
        stored = f", {_format_bytes(info['weights_bytes'])} on disk" if info["weights_bytes"] else ""
        lines.append(f"  parameters:    {info['parameters']:,} ({dtypes}{stored})")
    else:
        lines.append("  parameters:    no safetensors weights")
    if info["vocoder"]:
        lines.append(f"  vocoder:       {info['vocoder']}")
    if info["tokenizer"]:
        lines.append(f"  tokenizer:     {info['tokenizer']}")
    card = info["card"]
    if card:
        lines.append(f"  card:          {card.get('title', '(no title)')}")
        for key in (*_CARD_KEYS, "summary"):
            if key in card:
                value = ", ".join(map(str, card[key])) if isinstance(card[key], list) else card[key]
                lines.append(f"    {key}: {value}")
    else:
        lines.append("  card:          none (no README.md)")
    return lines


def _run(args: argparse.Namespace) -> int:
    info = describe(args.source, revision=args.revision, token=args.token).as_dict()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        print("\n".join(format_description(info)))
    return 0
