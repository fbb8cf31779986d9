"""Per-device memory of the full-scale recipes, compiled on fake CPU devices.

    python -m experiments.recipes.plans            # writes results/plan_at_exorl.{json,txt}
                                                   # and results/plan_dt_d4rl.{json,txt}
    python -m experiments.recipes.plans --only at  # one family

Each case runs ``python -m experiments.recipes.launch plan RECIPE --mesh M [...]`` in a fresh
process with as many fake devices as its mesh needs (the device count is fixed when JAX
starts), and records the compiled step's per-device bytes next to accelerator memories.
Nothing is allocated: the numbers are XLA:CPU's buffer assignment of the partitioned step
(arguments and outputs exact; a GPU/TPU compiler's temporaries can differ).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

from experiments.recipes.configs import D4RL_DATASETS, EXORL_TASKS
from rl_ring.io import atomic_file, device_env, write_json

ROOT = Path(__file__).resolve().parents[2]
GIB = 1024**3
#: Accelerator memories the plans are compared with (bytes).
ACCELERATORS = {"A100/H100 80 GB": 80e9, "TPU v4 32 GB": 32e9}


@dataclass(frozen=True)
class Case:
    """One compiled step: a recipe on a mesh, optionally another length or attention."""

    recipe: str
    mesh: str
    seq_len: int = 0
    impl: str = ""
    batch_size: int = 0
    label: str = ""


def at_cases() -> list[Case]:
    """Every ExoRL recipe on 64 devices; walker run on other meshes and the paper's baselines
    (blockwise on one device at 32 and 128 trajectories, i.e. 128K and 512K tokens)."""
    cases = [Case(f"at-exorl-{t}", "seq=64", label="ring, 64 devices") for t in EXORL_TASKS]
    w = "at-exorl-walker_run"
    cases += [
        Case(w, "seq=8", label="ring, one 8-device host"),
        Case(w, "fsdp=4,seq=16", batch_size=4, label="ring + fsdp, 64 devices, 4 chains"),
        Case(w, "seq=256", label="ring, 256 devices"),
        Case(w, "seq=1", seq_len=128_000, impl="blockwise",
             label="blockwise (BPT), 1 device, 32 trajectories"),
        Case(w, "seq=1", impl="blockwise", label="blockwise (BPT), 1 device, 128 trajectories"),
    ]
    return cases


def dt_cases() -> list[Case]:
    return [Case(f"dt-d4rl-{d}", "data=1", label="1 device") for d in D4RL_DATASETS]


def case_argv(case: Case) -> list[str]:
    """``experiments.recipes.launch plan`` arguments of a case."""
    argv = ["experiments.recipes.launch", "plan", case.recipe, "--mesh", case.mesh]
    for flag, value in (("--seq-len", case.seq_len), ("--impl", case.impl),
                        ("--batch-size", case.batch_size)):
        if value:
            argv += [flag, str(value)]
    return argv


def run_case(case: Case, timeout: int) -> dict:
    """Compiles one case in a fresh process; the report, or the failure."""
    n = 1
    for part in case.mesh.split(","):
        n *= int(part.split("=")[1])
    env = {**device_env(n), "JAX_PLATFORMS": "cpu"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "plan.json"
        cmd = [sys.executable, "-m", *case_argv(case)]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([*cmd, "--json-out", str(out)], env=env, cwd=ROOT,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {**case.__dict__, "ok": False, "error": f"compile exceeded {timeout} s"}
        row = {**case.__dict__, "command": "python -m " + " ".join(case_argv(case)),
               "wall_s": time.perf_counter() - t0}
        if proc.returncode != 0 or not out.exists():
            return {**row, "ok": False, "error": proc.stderr.strip().splitlines()[-1:]}
        report = json.loads(out.read_text())
        table = proc.stdout.strip()
    fits = {name: report["peak_bytes"] <= mem for name, mem in ACCELERATORS.items()}
    return {**row, "ok": True, **report, "fits": fits, "table": table}


def text(rows: list[dict]) -> str:
    """The plans as text: one line per case, then each compiled step's table."""
    lines = [f"{'recipe':34s} {'mesh':14s} {'tokens':>9s} {'params':>8s} {'peak/device':>12s}  "
             + "  ".join(f"fits {k}" for k in ACCELERATORS)]
    for r in rows:
        if not r["ok"]:
            lines.append(f"{r['recipe']:34s} {r['mesh']:14s} failed: {r['error']}")
            continue
        fits = "  ".join(f"{'yes' if r['fits'][k] else 'NO':>{len(k) + 5}s}" for k in ACCELERATORS)
        lines.append(f"{r['recipe']:34s} {r['mesh']:14s} {r['seq_len']:>9,d} "
                     f"{r['num_params'] / 1e6:>7.1f}M {r['peak_bytes'] / GIB:>9.2f} GiB  {fits}"
                     f"   ({r['label']})")
    lines.append("")
    for r in rows:
        if r["ok"]:
            lines += [f"$ {r['command']}", r["table"], ""]
    return "\n".join(lines)


def write(rows: list[dict], stem: Path) -> None:
    write_json({"accelerators": ACCELERATORS, "plans": rows}, stem.with_suffix(".json"))
    with atomic_file(stem.with_suffix(".txt")) as tmp:
        tmp.write_text(text(rows))


@dataclass(frozen=True)
class Args:
    """Compile the recipes' training steps and write their per-device memory."""

    only: Literal["all", "at", "dt"] = "all"
    """Which recipe family."""
    out_dir: str = "results"
    """Directory of plan_at_exorl.* and plan_dt_d4rl.*."""
    timeout: int = 1800
    """Seconds per compile before it is recorded as failed."""
    rerun_failed: bool = False
    """Keep the cases already in the JSON that compiled; compile only the others."""


def main(argv: list[str] | None = None) -> int:
    args = tyro.cli(Args, args=sys.argv[1:] if argv is None else argv)
    families = {"at": ("plan_at_exorl", at_cases), "dt": ("plan_dt_d4rl", dt_cases)}
    for key, (stem, cases) in families.items():
        if args.only not in ("all", key):
            continue
        rows = []
        path = Path(args.out_dir) / f"{stem}.json"
        done = {}
        if args.rerun_failed and path.exists():
            done = {(r["recipe"], r["mesh"], r["seq_len"] if r["ok"] else None, r["label"]): r
                    for r in json.loads(path.read_text())["plans"] if r["ok"]}
        for case in cases():
            old = [r for (rec, mesh, _, label), r in done.items()
                   if (rec, mesh, label) == (case.recipe, case.mesh, case.label)]
            row = ({**old[0], "command": "python -m " + " ".join(case_argv(case))} if old
                   else run_case(case, args.timeout))
            rows.append(row)
            peak = f"{row['peak_bytes'] / GIB:.2f} GiB" if row["ok"] else row["error"]
            print(f"{case.recipe} {case.mesh} {case.label}: {peak}", flush=True)
        write(rows, Path(args.out_dir) / stem)
    return 0


if __name__ == "__main__":
    sys.exit(main())
