"""Functions of the C library this process already uses, for the few calls Python does not wrap: Linux's
renameat2 (no-replace renames), glibc's malloc controls (the merge) and Linux's sync_file_range (registry uploads).

Each is looked up once; None where the C library lacks it (not Linux, not glibc), and callers then do without.
errno is kept per call (`ctypes.get_errno()`).
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable


@functools.cache
def _library() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


@functools.cache
def libc_function(name: str, *argtypes: type) -> Callable[..., int] | None:
    """The C function `name`, its arguments declared as `argtypes` when given (ctypes otherwise passes Python ints
    as 32-bit C ints); None when the C library has no such function."""
    function = getattr(_library(), name, None)
    if function is None:
        return None
    if argtypes:
        function.argtypes = list(argtypes)
    return function
