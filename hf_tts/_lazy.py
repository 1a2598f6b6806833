"""Module-level `__getattr__` for packages whose public names load on first use (PEP 562)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_getattr(package: str, names: dict[str, str], modules: tuple[str, ...] = ()) -> Callable[[str], Any]:
    """A `__getattr__` for `package`: each of `names` is imported from the module it maps to, each of `modules` is
    that submodule itself; the value is then cached in the package, so it loads once."""

    def __getattr__(name: str) -> Any:
        if name in names:
            value = getattr(importlib.import_module(names[name]), name)
        elif name in modules:
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__


def lazy_model_folder(
    package: str, configuration: tuple[str, ...], modeling: tuple[str, ...]
) -> tuple[list[str], Callable[[str], Any]]:
    """`__all__` and `__getattr__` of a model folder `hf_tts.models.NAME`: the `configuration` names come from its
    `configuration_NAME` module and the `modeling` names from `modeling_NAME`, each on first use, so reading a config
    never imports the modeling code."""
    name = package.rsplit(".", 1)[-1]
    names = {item: f"{package}.configuration_{name}" for item in configuration}
    names.update({item: f"{package}.modeling_{name}" for item in modeling})
    return sorted(names), lazy_getattr(package, names)
