"""Every Auto*/pipeline registration of the package, in one place.

transformers 5 has no plugin entry point, so `import hf_tts` calls `register_all()`. It is idempotent: a second
call does nothing. Each family adds its lines to `_register_models` / `_register_pipelines` below.
"""

from __future__ import annotations

_registered = False


def _register_models() -> None:
    pass


def _register_pipelines() -> None:
    pass


def register_all() -> None:
    """Register configs, models, tokenizers, processors and pipelines with transformers (once)."""
    global _registered
    if _registered:
        return
    _register_models()
    _register_pipelines()
    _registered = True
