"""The agents by name: ``get("at")`` returns the agent's module."""

from __future__ import annotations

from types import ModuleType

from agents import ad, at, bc, dpt, dt

AGENTS: dict[str, ModuleType] = {"at": at, "dt": dt, "bc": bc, "ad": ad, "dpt": dpt}


def get(name: str) -> ModuleType:
    """The agent module registered under ``name`` (at, dt, bc, ad, dpt; any case).

    Raises:
        ValueError: an unknown name, listing the known ones.
    """
    module = AGENTS.get(name.lower())
    if module is None:
        raise ValueError(f"unknown agent {name!r}; known agents are {sorted(AGENTS)}")
    return module


def names() -> tuple[str, ...]:
    """The registered agents' names."""
    return tuple(AGENTS)
