"""Data-path benchmark: sampler throughput, relabelling throughput, memory of a mapped store.

Writes ``results/data.json`` and ``results/data.png`` (existing ones are replaced only with
``--overwrite``)::

    rl-ring bench data            # full run (a few minutes on 2 cores)
    rl-ring bench data --quick    # under a minute (or: python -m experiments.bench.data --quick)

Measured:

- tokens/s of each sampler at its default config (AT chains, AD learning histories, DT and
  BC windows) and of AT at the paper's size (32 trajectories of 1000 steps, 128K tokens per
  row), on synthetic stores shaped like ExoRL walker (obs 24, action 6, 1000-step episodes)
  and Dark Room (obs 2, 5 actions, 20-step episodes), saved and read back memory-mapped;
  plainly (``next_batch``) and through the background prefetch thread;
- reward-relabelling throughput (states/s on one core) with the data engineer's
  ``envs.relabel.benchmark_relabel`` when it is importable;
- resident memory of a memory-mapped store while a sampler draws from it, against the same
  store loaded into RAM, each in a fresh process;
- for AD windows, the share of tokens in a leading partial episode with ``align="step"``
  and ``align="episode"`` (a data-level measure of what alignment changes);
- the ratio of sampler tokens/s to what a training step consumes, read from
  ``results/train.json`` when it exists (written by ``rl-ring bench train``).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from experiments.bench import common
from rl_ring.data.normalize import Normalization
from rl_ring.data.samplers import (
    BCSampler,
    BCSamplerConfig,
    ChainConfig,
    ChainSampler,
    DTSampler,
    DTSamplerConfig,
    HistoryConfig,
    HistorySampler,
    Sampler,
)
from rl_ring.data.store import EpisodeStore

ROOT = common.ROOT  # relative outputs and results/train.json are under it


@dataclass(frozen=True)
class BenchDataConfig:
    """Options of the data benchmark."""

    quick: bool = False
    """Small stores and few repetitions: under a minute."""
    out: str = "results/data.json"
    """Where the JSON goes (the PNG goes beside it)."""
    seconds: float = 3.0
    """Time budget per sampler measurement (each repeats batches until it is spent)."""
    relabel_states: int = 2000
    """States relabelled in the relabelling measurement."""
    memory_steps: int = 1_000_000
    """Steps of the store used for the memory measurement."""
    seed: int = 0
    """Seed of the synthetic stores."""
    overwrite: bool = False
    """Replace existing output files."""


# ---------------------------------------------------------------------- synthetic stores
def walker_like_store(num_episodes: int, episode_len: int = 1000, seed: int = 0) -> EpisodeStore:
    """ExoRL-walker-shaped episodes: obs 24, action 6, returns spread over episodes."""
    rng = np.random.default_rng(seed)
    n = num_episodes * episode_len
    skill = np.repeat(rng.random(num_episodes), episode_len)  # per-episode reward level
    return EpisodeStore(
        observations=rng.normal(size=(n, 24)).astype(np.float32),
        actions=rng.uniform(-1, 1, (n, 6)).astype(np.float32),
        rewards=(skill * rng.random(n)).astype(np.float32),
        terminals=np.zeros(n, bool),
        timeouts=np.arange(1, n + 1) % episode_len == 0,
        episode_starts=np.arange(num_episodes + 1, dtype=np.int64) * episode_len,
        metadata={"env_id": "synthetic-walker"},
    )


def darkroom_like_store(
    num_histories: int, episodes_per_history: int, episode_len: int = 20, seed: int = 0
) -> EpisodeStore:
    """Dark-Room-shaped learning histories: obs 2, 5 discrete actions, improving rewards."""
    rng = np.random.default_rng(seed)
    num_eps = num_histories * episodes_per_history
    n = num_eps * episode_len
    progress = np.tile(np.arange(episodes_per_history) / episodes_per_history, num_histories)
    p_reward = np.repeat(progress, episode_len)
    return EpisodeStore(
        observations=rng.integers(0, 9, (n, 2)).astype(np.float32),
        actions=rng.integers(0, 5, n),
        rewards=(rng.random(n) < p_reward).astype(np.float32),
        terminals=np.zeros(n, bool),
        timeouts=np.arange(1, n + 1) % episode_len == 0,
        episode_starts=np.arange(num_eps + 1, dtype=np.int64) * episode_len,
        episode_extras={
            "history_id": np.repeat(np.arange(num_histories), episodes_per_history),
            "episode_in_history": np.tile(np.arange(episodes_per_history), num_histories),
            "task_id": np.repeat(np.arange(num_histories), episodes_per_history),
        },
        metadata={"env_id": "synthetic-darkroom", "action_space": {"type": "discrete", "n": 5}},
    )


# ---------------------------------------------------------------------- measurements
def time_sampler(sampler: Sampler, seconds: float, min_batches: int = 3) -> dict[str, Any]:
    """Batches/s of ``next_batch`` and of the prefetch iterator, median over batches."""
    sampler.batch_at(10_000)  # warm the page cache and the allocator
    batch = sampler.batch_at(0)
    tokens = int(batch.kind.size)
    valid = float(batch.valid.mean())
    per_batch = []
    t_end = time.perf_counter() + seconds
    while len(per_batch) < min_batches or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        sampler.next_batch()
        per_batch.append(time.perf_counter() - t0)
    med = statistics.median(per_batch)
    # Prefetch: a consumer that does nothing else sees the thread's production rate.
    n_pref = max(min_batches, len(per_batch) // 2)
    with sampler.prefetch(depth=2) as it:
        next(it)
        t0 = time.perf_counter()
        for _ in range(n_pref):
            next(it)
        pref = (time.perf_counter() - t0) / n_pref
    # Overlap: a consumer that spends ``busy`` seconds per batch in a GIL-free "training
    # step" (a sleep; at least 10 ms so that sleep granularity does not dominate). Serial
    # costs busy + batch time per batch; perfect overlap costs max(busy, batch time).
    busy = max(med, 0.01)
    n_ovl = max(min_batches, min(len(per_batch) // 4, 20))
    ticks = []
    for _ in range(n_ovl):
        t0 = time.perf_counter()
        sampler.next_batch()
        time.sleep(busy)
        ticks.append(time.perf_counter() - t0)
    serial = statistics.median(ticks)
    with sampler.prefetch(depth=2) as it:
        next(it)
        ticks = []
        for _ in range(n_ovl):
            t0 = time.perf_counter()
            next(it)
            time.sleep(busy)
            ticks.append(time.perf_counter() - t0)
        overlapped = statistics.median(ticks)
    return {
        "batch_shape": list(batch.shape),
        "feature_dim": int(batch.values.shape[-1]),
        "tokens_per_batch": tokens,
        "valid_fraction": valid,
        "batches_timed": len(per_batch),
        "seconds_per_batch_median": med,
        "seconds_per_batch_min": min(per_batch),
        "tokens_per_s": tokens / med,
        "valid_tokens_per_s": tokens * valid / med,
        "prefetch_tokens_per_s": tokens / pref,
        "with_busy_consumer": {
            "consumer_seconds_per_batch": busy,
            "serial_seconds_per_batch": serial,
            "prefetch_seconds_per_batch": overlapped,
        },
    }


def sampler_rows(cfg: BenchDataConfig, tmp: Path) -> list[dict[str, Any]]:
    walker_eps = 40 if cfg.quick else 200
    hist, eps_per_hist = (4, 1000) if cfg.quick else (40, 1000)
    walker = walker_like_store(walker_eps, seed=cfg.seed).save(tmp / "walker")
    dark = darkroom_like_store(hist, eps_per_hist, seed=cfg.seed).save(tmp / "darkroom")
    walker, dark = EpisodeStore.load(walker), EpisodeStore.load(dark)  # memory-mapped
    cases = [
        ("AT default", walker, ChainSampler, ChainConfig()),
        ("AT paper (32 x 1000 steps)", walker, ChainSampler,
         ChainConfig(batch_size=1, num_trajectories=32)),
        ("AD default", dark, HistorySampler, HistoryConfig()),
        ("AD 1000 episodes", dark, HistorySampler,
         HistoryConfig(batch_size=1, window_steps=20_000)),
        ("DT default", walker, DTSampler, DTSamplerConfig()),
        ("DT packed 64 x 20 steps", walker, DTSampler, DTSamplerConfig(batch_size=8, pack=64)),
        ("BC-10% default", walker, BCSampler, BCSamplerConfig()),
    ]
    rows = []
    for name, store, sampler_cls, scfg in cases:
        sampler = sampler_cls(store, scfg)
        res = time_sampler(sampler, cfg.seconds / (3 if cfg.quick else 1))
        rows.append(
            {
                "name": name,
                "sampler": sampler.name,
                "config": asdict(scfg),
                "store": repr(store),
                "layout": repr(sampler.layout),
                **res,
            }
        )
        busy = res["with_busy_consumer"]
        print(
            f"{name:28s} {res['batch_shape']} {res['tokens_per_s'] / 1e6:7.2f} M tokens/s "
            f"(prefetch {res['prefetch_tokens_per_s'] / 1e6:.2f} M, valid "
            f"{res['valid_fraction']:.0%}); consumer busy {busy['consumer_seconds_per_batch']:.3f}"
            f" s/batch: serial {busy['serial_seconds_per_batch']:.3f}, prefetch "
            f"{busy['prefetch_seconds_per_batch']:.3f} s/batch",
            flush=True,
        )
    return rows


def ad_alignment_rows(cfg: BenchDataConfig) -> list[dict[str, Any]]:
    """How much of an AD window is a leading partial episode, for each ``align``.

    A data-level measure only (which alignment trains better needs AD training runs): the
    fraction of a window's tokens that precede its first episode start, i.e. belong to an
    episode whose beginning is cut off.
    """
    store = darkroom_like_store(4, 200, seed=cfg.seed)
    rows = []
    for window in (100, 1000):
        for align in ("step", "episode"):
            sampler = HistorySampler(store, HistoryConfig(window_steps=window, align=align))
            flag_col = sampler.layout.obs_dim + sampler.layout.act_dim + 1
            lead = []
            for step in range(10 if cfg.quick else 50):
                flags = sampler.batch_at(step).values[..., flag_col] > 0.5
                first = np.where(flags.any(axis=1), flags.argmax(axis=1), window)
                lead.extend((first / window).tolist())
            rows.append(
                {
                    "window_steps": window,
                    "align": align,
                    "episode_len": 20,
                    "leading_partial_episode_fraction": float(np.mean(lead)),
                }
            )
            print(
                f"AD window {window:5d} align={align:8s}: {np.mean(lead):.2%} of tokens in a "
                "leading partial episode",
                flush=True,
            )
    return rows


def relabel_row(cfg: BenchDataConfig) -> dict[str, Any]:
    os.environ.setdefault("MUJOCO_GL", "disable")  # physics only, no rendering
    try:
        from envs.relabel import benchmark_relabel
    except ImportError as err:
        return {"skipped": f"envs.relabel.benchmark_relabel not importable ({err})"}
    states = 300 if cfg.quick else cfg.relabel_states
    res = benchmark_relabel("walker_run", num_states=states, workers=1, seed=cfg.seed)
    print(f"relabel walker_run: {res['states_per_s']:.0f} states/s on one core", flush=True)
    return res


_MEMORY_CHILD = r"""
import json, sys
from rl_ring.data.normalize import Normalization
from rl_ring.data.samplers import ChainConfig, ChainSampler
from rl_ring.data.store import EpisodeStore

def rss():
    out = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[k] = int(v.split()[0]) / 1024.0
    return out

path, mode, norm_from, batches = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
r = {"start": rss()}
store = EpisodeStore.load(path, mmap=(mode == "mmap"))
r["loaded"] = rss()
if norm_from == "store":
    norm = Normalization.from_store(store)  # one pass over every observation
else:
    norm = Normalization.load(norm_from)  # as saved with a checkpoint
r["norm_ready"] = rss()
sampler = ChainSampler(store, ChainConfig(batch_size=4, num_trajectories=4), norm=norm)
r["sampler_built"] = rss()
for _ in range(batches):
    b = sampler.next_batch()
del b
r["after_sampling"] = rss()
print(json.dumps(r))
"""


def memory_row(cfg: BenchDataConfig, tmp: Path) -> dict[str, Any]:
    """RSS growth (MiB, over a fresh process after imports) at each stage, per variant.

    ``VmHWM`` is the peak RSS so far (it includes batches while they existed);
    ``RssFile`` counts pages of the mapped files that were read: page cache that the kernel
    can drop and re-read; ``RssAnon`` is the process's own memory.
    """
    steps = 200_000 if cfg.quick else cfg.memory_steps
    store = walker_like_store(steps // 1000, seed=cfg.seed)
    path = store.save(tmp / "memory")
    norm_path = Normalization.from_store(store).save(tmp / "memory_norm.json")
    nbytes = sum(
        getattr(store, k).nbytes
        for k in ("observations", "actions", "rewards", "terminals", "timeouts")
    )
    del store
    batches = 5 if cfg.quick else 20
    out: dict[str, Any] = {
        "store_steps": steps,
        "store_mib": nbytes / 2**20,
        "sampler": "ChainConfig(batch_size=4, num_trajectories=4), 1000-step episodes",
        "batches": batches,
    }
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    variants = {
        "mmap": ("mmap", str(norm_path)),
        "mmap_norm_from_store": ("mmap", "store"),
        "ram": ("ram", str(norm_path)),
    }
    for name, (mode, norm_from) in variants.items():
        proc = subprocess.run(
            [sys.executable, "-c", _MEMORY_CHILD, str(path), mode, norm_from, str(batches)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        stages = json.loads(proc.stdout.strip().splitlines()[-1])
        base = stages.pop("start")
        out[name] = {
            stage: {k: v - base[k] for k, v in val.items()} for stage, val in stages.items()
        }
        last = out[name]["after_sampling"]
        print(
            f"memory {name:21s}: RSS growth after load {out[name]['loaded']['VmRSS']:6.1f} MiB, "
            f"after sampling {last['VmRSS']:6.1f} MiB (anon {last['RssAnon']:.1f}, file "
            f"{last['RssFile']:.1f}); store {nbytes / 2**20:.0f} MiB",
            flush=True,
        )
    return out


def train_comparison(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Sampler tokens/s over the training step's, when ``results/train.json`` gives it."""
    path = ROOT / "results" / "train.json"
    if not path.is_file():
        return {"status": "pending: results/train.json does not exist yet"}
    found = _find_tokens_per_s(json.loads(path.read_text()))
    if not found:
        return {"status": "pending: no tokens-per-second figure found in results/train.json"}
    train_tps = max(v for _, v in found)
    out = {"status": "measured", "train_tokens_per_s_max": train_tps, "train_figures": found}
    for r in rows:
        out[r["name"]] = r["tokens_per_s"] / train_tps
    return out


def _find_tokens_per_s(obj: Any, prefix: str = "") -> list[tuple[str, float]]:
    hits: list[tuple[str, float]] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, int | float) and "tokens_per_s" in str(k):
                hits.append((key, float(v)))
            else:
                hits += _find_tokens_per_s(v, key)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            hits += _find_tokens_per_s(v, f"{prefix}[{i}]")
    return hits


def plot(result: dict[str, Any], png: Path) -> None:
    plt = common.pyplot()
    rows = result["samplers"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [2, 1]})
    names = [r["name"] for r in rows]
    y = np.arange(len(rows))
    ax.barh(y - 0.2, [r["tokens_per_s"] for r in rows], 0.4, label="next_batch", zorder=2)
    ax.barh(y + 0.2, [r["prefetch_tokens_per_s"] for r in rows], 0.4, label="prefetch", zorder=2)
    comp = result["train_comparison"]
    if comp.get("status") == "measured":
        ax.axvline(comp["train_tokens_per_s_max"], color="k", ls="--", label="training step")
    else:
        ax.axvspan(
            1e4, 1e5, color="0.85", zorder=0, label="training step: 1e4-1e5 (estimate, pending)"
        )
    ax.set_yticks(y, names)
    ax.set_xscale("log")
    ax.set_xlim(left=5e3)
    ax.set_xlabel("tokens / s (2 CPU cores, shared machine)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, fontsize=8)
    ax.set_title("Sampler throughput")
    mem = result["memory"]
    labels, anon, file_ = [], [], []
    for mode, short in (("mmap", "mmap"), ("mmap_norm_from_store", "mmap+\nnorm"), ("ram", "RAM")):
        for stage, tag in (("loaded", "load"), ("after_sampling", "sample")):
            labels.append(f"{short}\n{tag}")
            anon.append(max(mem[mode][stage]["RssAnon"], 0.0))
            file_.append(max(mem[mode][stage]["RssFile"], 0.0))
    x = np.arange(len(labels))
    ax2.bar(x, anon, color="C3", label="private (anon)")
    ax2.bar(x, file_, bottom=anon, color="C0", alpha=0.5, label="mapped file (page cache)")
    ax2.axhline(mem["store_mib"], color="k", ls="--", label="store arrays")
    ax2.set_xticks(x, labels, fontsize=8)
    ax2.set_ylabel("RSS growth (MiB)")
    ax2.set_title(f"{mem['store_steps']:,}-step store")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    common.save_png(fig, png)


def run(cfg: BenchDataConfig) -> dict[str, Any]:
    out = common.resolve_out(cfg.out, ROOT)
    common.check_outputs([out, out.with_suffix(".png")], overwrite=cfg.overwrite,
                         what="the data benchmark")
    with tempfile.TemporaryDirectory(prefix="rl_ring_bench_data_") as tmp:
        tmp_path = Path(tmp)
        samplers = sampler_rows(cfg, tmp_path)
        memory = memory_row(cfg, tmp_path)
    result = {
        "benchmark": "data",
        "command": "rl-ring bench data" + (" --quick" if cfg.quick else ""),
        "config": asdict(cfg),
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version()},
        "note": "timings on a machine shared with other jobs; compare ratios within one run",
        "samplers": samplers,
        "ad_alignment": ad_alignment_rows(cfg),
        "relabel": relabel_row(cfg),
        "memory": memory,
    }
    result["train_comparison"] = train_comparison(samplers)
    common.write_result(result, out, plot)
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return result


def main(argv: list[str] | None = None) -> int:
    import tyro

    cfg = tyro.cli(BenchDataConfig, args=argv, prog="rl-ring bench data")
    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
