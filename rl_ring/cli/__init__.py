"""The ``rl-ring`` command: one subcommand per job, wired here explicitly.

This package is a composition root (with ``experiments``): the one place in ``rl_ring`` that
may import agents, envs and experiments (see docs/architecture.md). Each subcommand's
module is imported only when it is called, so ``rl-ring --help`` is instant.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

Command = Callable[[list[str]], "int | None"]


def _quickstart(argv: list[str]):
    from experiments.quickstart import main

    return main(argv)


def _data(argv: list[str]):
    from rl_ring.cli.data import main

    return main(argv)


def _collect(argv: list[str]):
    from envs.collect import main

    return main(argv)


def _train(argv: list[str]):
    from rl_ring.cli.train import main

    return main(argv)


def _plan(argv: list[str]):
    from rl_ring.cli.plan import main

    return main(argv)


def _eval(argv: list[str]):
    from rl_ring.cli.eval import main

    return main(argv)


def _bench(argv: list[str]):
    from experiments.bench import main

    return main(argv)


# name -> (the function that runs it with argv, one-line help)
COMMANDS: dict[str, tuple[Command, str]] = {
    "quickstart": (_quickstart, "collect, train and evaluate a small in-context agent end to end"),
    "data": (_data, "inspect and convert offline datasets (data info PATH)"),
    "collect": (_collect, "collect a dataset with a behaviour policy (random, scripted, learner)"),
    "train": (_train, "train an agent (AT, DT, BC, AD) on an offline dataset"),
    "plan": (_plan, "compile a training step and print per-device memory"),
    "eval": (_eval, "evaluate a checkpoint in its environment, several trials in context"),
    "bench": (_bench, "run a benchmark (attention, data, train, eval, eval_workers, model_memory)"),
}


def _usage() -> str:
    lines = ["usage: rl-ring COMMAND [options]", "", "commands:"]
    width = max(map(len, COMMANDS))
    for name, (_, text) in COMMANDS.items():
        lines.append(f"  {name.ljust(width)}  {text}")
    lines.append("")
    lines.append("Run 'rl-ring COMMAND --help' for a command's options.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Runs ``rl-ring COMMAND ...``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"rl-ring: unknown command {name!r}\n", file=sys.stderr)
        print(_usage(), file=sys.stderr)
        return 2
    from rl_ring.eval.env_spec import headless_gl_default

    headless_gl_default()  # before any command imports dm_control (no GLFW display warnings)
    run, _ = COMMANDS[name]
    return int(run(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
