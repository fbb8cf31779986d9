"""The ``rl-ring`` command: one subcommand per job, each implemented in its own module.

Subcommand modules are imported only when called, so ``rl-ring --help`` is instant.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module, function, one-line help). Each function takes argv (list[str]).
COMMANDS: dict[str, tuple[str, str, str]] = {
    "quickstart": ("experiments.quickstart", "main",
                   "collect, train and evaluate a small in-context agent end to end"),
    "data": ("rl_ring.data.cli", "main", "inspect and convert offline datasets (data info PATH)"),
    "collect": ("envs.collect", "main",
                "collect a dataset with a behaviour policy (random, scripted, learner)"),
    "train": ("rl_ring.train.cli", "main", "train an agent (AT, DT, BC, AD) on an offline dataset"),
    "plan": ("rl_ring.train.plan", "main", "compile a training step and print per-device memory"),
    "eval": ("rl_ring.eval.cli", "main",
             "evaluate a checkpoint in its environment, several trials in context"),
    "bench": ("experiments.bench", "main", "run a benchmark script (attention, data, train, eval)"),
}


def _usage() -> str:
    lines = ["usage: rl-ring COMMAND [options]", "", "commands:"]
    width = max(map(len, COMMANDS))
    for name, (_, _, text) in COMMANDS.items():
        lines.append(f"  {name.ljust(width)}  {text}")
    lines.append("")
    lines.append("Run 'rl-ring COMMAND --help' for a command's options.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"rl-ring: unknown command {name!r}\n", file=sys.stderr)
        print(_usage(), file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    fn = getattr(importlib.import_module(module), func)
    result = fn(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
