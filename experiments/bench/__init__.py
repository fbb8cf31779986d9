"""The benchmarks: ``rl-ring bench NAME [options]`` (or ``python -m experiments.bench.NAME``).

Each writes a JSON file and a PNG under ``results/`` (replacing existing ones only with
``--overwrite``); their shared timing, plotting and writing code is in ``common.py``.
Importing this package starts nothing (no JAX): a benchmark sets its device flags first.
"""

from __future__ import annotations

import sys

# name -> one-line help; main() dispatches on the name.
BENCHMARKS: dict[str, str] = {
    "attention": "attention kernels: speed, FLOP rate, per-device memory, causal balance",
    "data": "samplers' tokens/s, relabelling, memory of a mapped store",
    "train": "training step: ring vs blockwise tokens/s, longest context, paper plan",
    "train_dense": "training step on one device: dense (reference) vs blockwise attention",
    "eval": "evaluation: KV-cached policy vs recompute, batching, decode scaling",
    "refill": "KV-cache refill over the rows that slid vs the whole batch",
    "eval_workers": "rollout workers: env steps/s in-process vs worker processes",
    "jax_rollout": "JAX-native rollout (one jitted scan) vs Python workers: env steps/s",
    "model_memory": "compiled memory of a training step per rematerialisation policy",
    "attention_gpu": "one GPU: fused Pallas kernel vs XLA blockwise, dense, cuDNN; ring overhead",
    "xland_reader": "XLand-100B-layout file: AD window tokens/s and resident memory",
}


def _usage() -> str:
    width = max(map(len, BENCHMARKS))
    lines = ["usage: rl-ring bench NAME [options]", "", "benchmarks:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, text in BENCHMARKS.items()]
    lines += ["", "Run 'rl-ring bench NAME --help' for a benchmark's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark named by ``argv[0]`` with the rest of ``argv``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name == "attention":
        from experiments.bench import attention as bench
    elif name == "data":
        from experiments.bench import data as bench
    elif name == "train":
        from experiments.bench import train as bench
    elif name == "train_dense":
        from experiments.bench import train_dense as bench
    elif name == "eval":
        from experiments.bench import eval as bench
    elif name == "refill":
        from experiments.bench import refill as bench
    elif name == "eval_workers":
        from experiments.bench import eval_workers as bench
    elif name == "jax_rollout":
        from experiments.bench import jax_rollout as bench
    elif name == "model_memory":
        from experiments.bench import model_memory as bench
    elif name == "attention_gpu":
        from experiments.bench import attention_gpu as bench
    elif name == "xland_reader":
        from experiments.bench import xland_reader as bench
    else:
        print(f"rl-ring bench: unknown benchmark {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    from rl_ring.io import OutputExistsError

    try:
        return int(bench.main(rest) or 0)
    except OutputExistsError as err:  # refused before any work: a message, not a traceback
        print(f"rl-ring bench {name}: {err}", file=sys.stderr)
        return 2
