"""``rl-ring quickstart``: an in-context RL agent end to end, on CPU, in a few minutes.

    rl-ring quickstart                  # ~5 minutes on 2 CPU cores; writes runs/quickstart/
    rl-ring quickstart --out DIR
    rl-ring quickstart --tiny           # about a minute (the test runs it)

What it does, with nothing to download:

1. collects learning histories of a posterior-sampling learner on the 64 training goals of
   Dark Room (a 9x9 room whose goal cell is never observed; 20-step episodes);
2. trains Algorithm Distillation (a 4-layer transformer over windows of 10 consecutive
   episodes = 200 tokens) with **ring attention over 8 fake CPU devices** (mesh ``seq=8``);
3. evaluates it in context on the 16 **held-out** goals with the rollout workers and a
   KV-cached policy: 40 episodes per goal in one context, no parameter updates;
4. prints a table (AD vs the source learner, a random policy and the optimum) and writes
   ``quickstart.json`` and ``quickstart.png`` (return against in-context episode) to ``--out``.

It runs in its own process on 8 fake CPU devices (set before JAX starts; if JAX is already
running with fewer devices, the command re-runs itself in a fresh process).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass

DEVICES = 8


@dataclass(frozen=True)
class QuickstartArgs:
    """Options of ``rl-ring quickstart``."""

    out: str = "runs/quickstart"
    """Output directory: quickstart.json, quickstart.png and the run (data, checkpoint)."""
    tiny: bool = False
    """About a minute: fewer histories, a smaller model, fewer steps and episodes."""
    steps: int = 0
    """Override the training steps (0: 800, or 60 with --tiny)."""
    progress: bool = True
    """Show the training progress bar."""
    overwrite: bool = False
    """Allow --out to hold files other than an earlier quickstart's (they are kept)."""


def quick_run(tiny: bool = False):
    """The quickstart's run: the main AD configuration, shortened to fit a few minutes."""
    from experiments.configs.ad_darkroom import HistorySpec, main_run

    run = main_run("darkroom").replace(name="ad", steps=800, eval_train_seeds=0,
                                       loss_batches=2)
    if tiny:
        run = run.replace(
            name="ad-tiny", history=HistorySpec(episodes_per_history=10, histories=32),
            window_episodes=4, width=32, depth=2, steps=60, batch_size=8, warmup_steps=10,
            eval_episodes=12, eval_rows=8, eval_test_seeds=2)
    return run


def _rerun(argv: list[str]) -> int:
    from rl_ring.io import device_env

    env = {**device_env(DEVICES), "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "experiments.quickstart", *argv]
    return subprocess.run(cmd, env=env, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``rl-ring quickstart``."""
    import tyro

    argv = list(sys.argv[1:] if argv is None else argv)
    args = tyro.cli(QuickstartArgs, args=argv, prog="rl-ring quickstart", description=__doc__)
    from rl_ring.io import claim_run_dir

    try:  # before the devices are set up or anything runs
        claim_run_dir(args.out, kind="quickstart", overwrite=args.overwrite)
    except OSError as err:
        print(f"rl-ring quickstart: {err}", file=sys.stderr)
        return 2
    from rl_ring.io import setup_cpu_devices
    from rl_ring.train.plan import ensure_cpu_devices

    # The flags take effect only if JAX's backend has not started yet; the caller's
    # environment is restored after the check, so that processes it starts later (a test
    # suite's subprocesses) do not inherit this run's single-threaded kernels.
    saved = {k: os.environ.get(k) for k in ("XLA_FLAGS", "JAX_PLATFORMS")}
    setup_cpu_devices(DEVICES)
    try:
        import jax

        # jax.devices() starts the backend here, while the flags are set.
        ready = ensure_cpu_devices(DEVICES) and len(jax.devices()) >= DEVICES
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if not ready:
        return _rerun(argv)
    return run_quickstart(args)


def run_quickstart(args: QuickstartArgs) -> int:
    """Collect -> train (ring, seq=8) -> evaluate -> table and plot; returns an exit code."""
    from experiments import ad_darkroom as ad
    from experiments import ad_darkroom_report as report
    from rl_ring.io import claim_run_dir, write_json

    t0 = time.perf_counter()
    run = quick_run(args.tiny)
    if args.steps:
        run = run.replace(steps=args.steps)
    out = claim_run_dir(args.out, kind="quickstart", overwrite=args.overwrite)
    ad.log(f"quickstart: Algorithm Distillation on Dark Room, ring attention over {DEVICES} "
           f"CPU devices, results in {out}")
    # <out>/<run name>/{data, train (the checkpoint), eval_*}
    record = ad.run_one(run, out, progress=args.progress)
    checkpoint = out / run.name / "train"
    random = ad.random_baseline(run, str(out / "baseline_random"))
    summary = report.summarize_main([record], {"random": random})
    summary["format"] = "rl_ring.Quickstart"
    summary["wall_s"] = time.perf_counter() - t0
    summary["devices"] = DEVICES
    summary["checkpoint"] = str(checkpoint)
    summary["collect_command"] = "rl-ring collect " + " ".join(
        ad.collect_argv(run, str(out / "data")))
    first = record["train"]["history"][0]["loss"]
    last = report.compact(record)["final_train_loss"]
    summary["train_loss"] = {"first": first, "last": last}
    summary["files"] = {"plot": report.plot_main(summary, out / "quickstart.png").name}
    write_json(summary, out / "quickstart.json")
    print()
    for line in report.main_table(summary):
        print(line)
    print(f"\ntraining loss {first:.3f} -> {last:.3f}; total {summary['wall_s']:.0f} s; "
          f"wrote {out / 'quickstart.json'} and {out / 'quickstart.png'}; the trained model "
          f"(checkpoint) is in {checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
