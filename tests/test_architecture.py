"""The house's floors (docs/architecture.md) are a contract: imports go down only, there
are no import cycles, and library code loads no project module by string."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rl_ring", "envs", "agents", "experiments")


def _lint_imports() -> str:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    return exe


def test_import_layer_contract_holds():
    """``lint-imports`` with the contract in pyproject.toml: a new upward import fails."""
    proc = subprocess.run([_lint_imports(), "--no-cache"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "BROKEN" not in proc.stdout and "KEPT" in proc.stdout


def _cycles(adj: dict[str, list[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on, stack, out = set(), [], []
    counter = 0
    for root in adj:
        if root in index:
            continue
        work = [(root, iter(adj[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            advanced = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(adj[w])))
                    advanced = True
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_cycle_finder_finds_a_planted_cycle():
    adj = {"a": ["b"], "b": ["c"], "c": ["a", "d"], "d": [], "e": ["e"]}
    assert _cycles(adj) == [["a", "b", "c"]]


def test_no_import_cycles_between_modules():
    """Every import, module-level or inside a function, counts."""
    graph = grimp.build_graph(*PACKAGES)
    adj = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in sorted(graph.modules)}
    assert _cycles(adj) == []


def test_library_loads_no_module_by_string():
    """``importlib`` / ``__import__`` only in the one plugin loader and the command line."""
    allowed = {ROOT / "rl_ring" / "plugins.py"}
    pattern = re.compile(r"\bimportlib\b|\b__import__\s*\(")
    offenders = []
    for path in sorted((ROOT / "rl_ring").rglob("*.py")):
        if path in allowed or (ROOT / "rl_ring" / "cli") in path.parents:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []


def test_the_training_loop_never_calls_back_into_agents(tmp_path):
    """A run reads top-down: the agent builds a Recipe of library functions, and once the
    loop runs, no code of agents/ executes (model, loss and sampler are rl_ring's)."""
    import threading

    from agents import run as agent_run
    from envs.collect import collect_random
    from rl_ring.train import TrainConfig, loop

    store = collect_random("darkroom", 8, seed=0)
    for agent in ("bc", "ad"):
        if agent == "ad":
            from envs.learners.history import collect_histories

            store = collect_histories("darkroom", "posterior", episodes_per_history=4,
                                      histories=4)
        cfg = agent_run.resolve_config(TrainConfig(
            agent=agent, preset="tiny", workdir=str(tmp_path / agent), steps=3, devices=1,
            batch_size=2, progress=False, tensorboard=False, log_every=1, ckpt_every=3))
        recipe = agent_run.recipe(cfg, store)
        agents_dir = str(ROOT / "agents")
        seen: set[str] = set()

        def profile(frame, event, arg, seen=seen, agents_dir=agents_dir):
            if event == "call" and frame.f_code.co_filename.startswith(agents_dir):
                seen.add(f"{frame.f_code.co_filename}:{frame.f_code.co_name}")

        sys.setprofile(profile)
        threading.setprofile(profile)
        try:
            result = loop.run(recipe, cfg)
        finally:
            sys.setprofile(None)
            threading.setprofile(None)
        assert result.step == 3
        assert seen == set(), f"{agent}: the loop called back into {sorted(seen)}"
