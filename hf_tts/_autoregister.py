"""Run `hf_tts.registration`'s two parts as soon as they are needed, without importing transformers for it.

transformers has no plugin entry point, so the Auto classes learn the package's model types by registration; that
imports the models (and torch, and transformers' modeling machinery, seconds). Doing it inside `import hf_tts` would
make every `hf-tts --help` and the torch-free registry server pay for it, and doing it when `import transformers`
completes would make `import hf_tts, transformers` pay it too although transformers itself is lazy. Instead an import
hook waits for the first of transformers' Auto modules (configuration_auto, modeling_auto, tokenization_auto, ...):
the Auto-class part runs when that import completes, and the pipeline part (which needs `transformers.pipelines`,
itself over a second to import) only when `transformers.pipelines` is imported. If such an import completes in the
middle of importing one of the package's own modules or a watched transformers module (which registration needs
whole), registration waits for the last such module to finish. Every route to an Auto class goes through the Auto
modules and every route to `pipeline()` through `transformers.pipelines`, so each part is in place before it is
used.
"""

from __future__ import annotations

import importlib.abc
import sys
import threading
from types import ModuleType
from typing import Any

_lock = threading.RLock()
_PIPELINES = "transformers.pipelines"
# transformers modules whose import means the Auto classes (or, for _PIPELINES, the pipelines) are about to be used.
_TRIGGERS = frozenset(
    {
        "transformers.models.auto.configuration_auto",
        "transformers.models.auto.modeling_auto",
        "transformers.models.auto.tokenization_auto",
        "transformers.models.auto.feature_extraction_auto",
        "transformers.models.auto.processing_auto",
        _PIPELINES,
    }
)
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


def _try_register(finishing: ModuleType | None = None) -> None:
    """Run the registration parts whose trigger modules are imported, unless one of the watched transformers modules
    or of the package's modules (other than `finishing`, whose code has just run) is half imported."""
    global _registering
    from hf_tts import registration

    with _lock:
        if registration.pipelines_registered():
            _uninstall()
            return
        if _registering:
            return
        imported = {name for name in _TRIGGERS if not _initializing(sys.modules.get(name), finishing)}
        imported &= sys.modules.keys()
        if not imported:
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
            registration.register_auto_classes()
            # the pipelines too if they are imported (possibly by what the Auto-class part just imported)
            if _PIPELINES in sys.modules and not _initializing(sys.modules[_PIPELINES], finishing):
                _uninstall()
                registration.register_pipelines()
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
    """Register what is needed now if transformers' Auto classes or pipelines are already imported, and the rest
    once they are."""
    from hf_tts import registration

    with _lock:
        if any(name in sys.modules for name in _TRIGGERS):
            _try_register()
        if not registration.pipelines_registered() and _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)
