"""The one loader of user plugins named on the command line as ``"package.module:callable"``
(an evaluation env factory, a training evaluation hook).

Library code never imports the project's own upper floors (agents, envs, experiments) by
name or by string; what a lower floor must call is passed in. A plugin is the user's own
code, named by the user, and is loaded here and nowhere else.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def load_plugin(spec: str, *, option: str = "plugin") -> Callable[..., Any]:
    """Imports ``"package.module:callable"`` and returns the callable.

    Args:
        spec: the plugin, as the user wrote it.
        option: the command-line option that named it, for error messages.

    Raises:
        ValueError: a malformed spec, a module that does not import, a missing or
            non-callable attribute (the message names ``option`` and ``spec``).
    """
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"{option} {spec!r}: expected 'package.module:callable'")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"{option} {spec!r}: cannot load it ({err})") from None
    if not callable(obj):
        raise ValueError(f"{option} {spec!r}: {type(obj).__name__} is not callable")
    return obj
