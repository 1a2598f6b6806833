"""Run `hf_tts.registration`'s parts as soon as they are needed, without importing transformers for it.

transformers has no plugin entry point, so the Auto classes learn the package's model types by registration; that
imports the package's config, model or processor classes (and with them torch and transformers' machinery, seconds).
Doing it inside `import hf_tts` would make every `hf-tts --help` and the torch-free registry server pay for it, and
doing it when `import transformers` completes would make `import hf_tts, transformers` pay it too although
transformers itself is lazy. Instead an import hook waits for transformers' Auto modules (configuration_auto,
modeling_auto, tokenization_auto, feature_extraction_auto, processing_auto) and `transformers.pipelines`: when one of
them finishes importing, its part of the registration runs (`registration.PART_OF_MODULE`), so reading a config does
not import the models, and the models do not import processors or pipelines. If such an import completes in the
middle of importing one of the package's own modules or a watched transformers module (which registration needs
whole), registration waits for the last such module to finish. Every route to an Auto class goes through its Auto
module and every route to `pipeline()` through `transformers.pipelines`, so each part is in place before it is used.
"""

from __future__ import annotations

import importlib.abc
import sys
import threading
from types import ModuleType
from typing import Any

from hf_tts import registration

_lock = threading.RLock()
# transformers modules whose import means one of the Auto classes (or the pipelines) is about to be used.
_TRIGGERS = frozenset(registration.PART_OF_MODULE)
# Set while a registration part runs: the package modules it imports finish inside it and must not start it again.
_registering = False
# transformers packages that must be whole before registration imports from them.
_WATCHED = _TRIGGERS | {"transformers", "transformers.models", "transformers.models.auto"}


def _initializing(module: ModuleType | None, finishing: ModuleType | None) -> bool:
    """Whether `module` is half imported. `finishing` (whose code has just run) counts as whole; specs are compared
    because transformers replaces its module object in sys.modules with a lazy one that shares the spec."""
    spec = getattr(module, "__spec__", None)
    if spec is not None and spec is getattr(finishing, "__spec__", None):
        return False
    return bool(getattr(spec, "_initializing", False))


def _wanted_parts(finishing: ModuleType | None) -> list[str]:
    """The parts whose trigger modules are wholly imported and that are not registered yet."""
    done = registration.registered_parts()
    return [
        part
        for name, part in registration.PART_OF_MODULE.items()
        if part not in done and name in sys.modules and not _initializing(sys.modules[name], finishing)
    ]


def _try_register(finishing: ModuleType | None = None) -> None:
    """Run the registration parts whose trigger modules are imported, unless one of the watched transformers modules
    or of the package's modules (other than `finishing`, whose code has just run) is half imported."""
    global _registering
    with _lock:
        if registration.is_registered():
            _uninstall()
            return
        if _registering or not _wanted_parts(finishing):
            return
        if any(_initializing(sys.modules.get(name), finishing) for name in _WATCHED if name in sys.modules):
            return
        # The top package only defines names; registration does not need it whole.
        if any(
            name.startswith("hf_tts.") and _initializing(module, finishing)
            for name, module in list(sys.modules.items())
        ):
            return
        _registering = True
        try:
            # A part may import further trigger modules (the models import transformers' modeling code): their
            # parts run in the next round.
            while wanted := _wanted_parts(finishing):
                for part in wanted:
                    registration.register(part)
            if registration.is_registered():
                _uninstall()
        finally:
            _registering = False


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Wraps the loaders of the watched transformers modules and of the package's modules so each, once executed,
    tries to register."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in _WATCHED and not fullname.startswith("hf_tts."):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        original = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            original(module)
            _try_register(finishing=module)

        loader.exec_module = exec_module
        return spec


_finder = _RegisterAfterImport()


def _uninstall() -> None:
    if _finder in sys.meta_path:
        sys.meta_path.remove(_finder)


def register_when_transformers_is_ready() -> None:
    """Register what is needed now for the Auto modules and pipelines already imported, and the rest once they are."""
    with _lock:
        if any(name in sys.modules for name in _TRIGGERS):
            _try_register()
        if not registration.is_registered() and _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)
