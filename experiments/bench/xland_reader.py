"""XLand reader benchmark: AD windows sampled from a large XLand-100B-layout file.

Writes ``results/xland_reader.json`` and ``results/xland_reader.png`` (existing ones are
replaced only with ``--overwrite``)::

    rl-ring bench xland_reader                   # a 2 GiB file (written once, then reused)
    rl-ring bench xland_reader --size-gib 0.05   # a quick check

The file is generated into a git-ignored work directory (``work_dirs/xland_reader/``,
claimed for this benchmark; a file of the same size written by an earlier run is reused).
Generation is fast because chunks are written directly: a pool of realistic 4096-step
chunks (an agent's 5x5 view while it walks a walled room with a few objects, episodes of
20-80 steps, sparse float16 rewards) is gzip-compressed once and the compressed bytes are
written into every chunk of every history with ``write_direct_chunk``. The file is a valid
XLand-layout file (same dtypes, chunks and gzip filter as the published datasets); its
compression ratio is measured and reported.

Measured in a fresh process (so the resident memory is the sampler's alone):
``XLandHistorySampler`` batches of ``--batch-size`` x ``--window-steps`` STEP tokens
(default 8 x 4096, the published AD baseline's window) drawn uniformly over the whole file,
as tokens/s of whole TokenBatches and of the file reads alone, and the process's resident
memory (RSS) after every batch and its peak (``ru_maxrss``). The target of issue 11: peak
RSS under 1 GiB and tokens/s at least 5x what a training step consumes here (read from
``results/train.json`` when it exists).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from experiments.bench import common

ROOT = common.ROOT
RUN_KIND = "bench_xland_reader"
_CHUNK = 4096
_POOL = 8  # distinct chunks per dataset, reused across the file


@dataclass(frozen=True)
class BenchXLandReaderConfig:
    """Options of the XLand reader benchmark."""

    size_gib: float = 2.0
    """Size of the generated file on disk (compressed), GiB."""
    work_dir: str = "work_dirs/xland_reader"
    """Where the file is written (git-ignored; claimed for this benchmark)."""
    out: str = "results/xland_reader.json"
    """Where the JSON goes (the PNG goes beside it)."""
    batch_size: int = 8
    """Windows per batch."""
    window_steps: int = 4096
    """Steps (= STEP tokens) per window."""
    seconds: float = 20.0
    """Time budget of each measurement (batches repeat until it is spent)."""
    cache_mib: float = 1.0
    """h5py chunk cache per open dataset, MiB."""
    obs_encoding: str = "onehot"
    """Observation features of the STEP tokens: "onehot" (625) or "index" (50)."""
    histories_per_group: int = 32
    """Histories of each task group."""
    chunks_per_history: int = 25
    """4096-step chunks per history (25: 102,400 steps)."""
    seed: int = 0
    """Seed of the generated data and of the sampler."""
    keep_file: bool = True
    """Keep the generated file for the next run (False: delete it at the end)."""
    overwrite: bool = False
    """Replace existing result files."""


# ---------------------------------------------------------------------------- the file
def _pool_chunks(seed: int) -> dict[str, list[np.ndarray]]:
    """``_POOL`` realistic 4096-step chunks of each dataset."""
    from rl_ring.data.xland import NUM_COLORS

    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {k: [] for k in
                                        ("states", "actions", "rewards", "dones",
                                         "expert_actions")}
    wall, floor, empty = 2 * NUM_COLORS + 5, 1 * NUM_COLORS + 1, 0  # tile * 12 + color
    for _ in range(_POOL):
        size = 9
        room = np.full((size + 4, size + 4), empty, np.uint8)  # outside the room: unseen
        room[2:-2, 2:-2] = wall
        room[3:-3, 3:-3] = floor
        for _ in range(4):  # a few objects
            y, x = rng.integers(3, size + 1, 2)
            room[y, x] = rng.integers(3, 13) * NUM_COLORS + rng.integers(0, NUM_COLORS)
        lengths = rng.integers(20, 81, _CHUNK // 20)
        ends = np.cumsum(lengths)
        ends = ends[ends < _CHUNK]
        dones = np.zeros(_CHUNK, bool)
        dones[ends - 1] = True
        steps = rng.integers(-1, 2, (_CHUNK, 2))
        pos = np.zeros((_CHUNK, 2), np.int64)
        p = rng.integers(3, size + 1, 2)
        for t in range(_CHUNK):
            if t == 0 or dones[t - 1]:
                p = rng.integers(3, size + 1, 2)
            p = np.clip(p + steps[t], 3, size)
            pos[t] = p
        ys = pos[:, 0, None, None] + np.arange(-2, 3)[None, :, None]
        xs = pos[:, 1, None, None] + np.arange(-2, 3)[None, None, :]
        out["states"].append(room[ys, xs])
        actions = rng.integers(0, 6, _CHUNK).astype(np.uint8)
        out["actions"].append(actions)
        out["expert_actions"].append(np.where(rng.random(_CHUNK) < 0.6, actions,
                                              rng.integers(0, 6, _CHUNK)).astype(np.uint8))
        rewards = np.zeros(_CHUNK, np.float16)
        success = dones & (rng.random(_CHUNK) < 0.5)
        rewards[success] = rng.uniform(0.3, 1.0, int(success.sum()))
        out["rewards"].append(rewards)
        out["dones"].append(dones)
    return out


def write_file(path: Path, cfg: BenchXLandReaderConfig) -> dict[str, Any]:
    """Writes the benchmark's XLand file (atomically) with direct chunk writes."""
    import h5py

    from rl_ring.data.xland import DTYPES, KEYS, VIEW
    from rl_ring.io import atomic_output

    t0 = time.perf_counter()
    pool = _pool_chunks(cfg.seed)
    packed = {k: [zlib.compress(np.ascontiguousarray(c).tobytes(), 6) for c in v]
              for k, v in pool.items()}
    raw = sum(np.asarray(v[0]).nbytes for v in pool.values())
    per_chunkset = sum(np.mean([len(b) for b in v]) for v in packed.values())
    chunks_needed = int(np.ceil(cfg.size_gib * (1 << 30) / per_chunkset))
    h, c = cfg.histories_per_group, cfg.chunks_per_history
    groups = max(1, int(np.ceil(chunks_needed / (h * c))))
    steps = c * _CHUNK
    rng = np.random.default_rng(cfg.seed + 1)
    with atomic_output(path, directory=False, overwrite=True, what="the benchmark's file") as tmp:
        with h5py.File(tmp, "w", libver="latest") as f:
            for g in range(groups):
                grp = f.create_group(str(g))
                grp.attrs["benchmark-id"] = "bench-synthetic"
                grp.attrs["env-id"] = "XLand-MiniGrid-R1-9x9"
                grp.attrs["ruleset-id"] = g
                for k in KEYS:
                    tail = (VIEW, VIEW) if k == "states" else ()
                    ds = grp.create_dataset(k, shape=(h, steps, *tail), dtype=DTYPES[k],
                                            chunks=(1, _CHUNK, *tail), compression="gzip",
                                            compression_opts=6)
                    picks = rng.integers(0, _POOL, (h, c))
                    for r in range(h):
                        for j in range(c):
                            ds.id.write_direct_chunk((r, j * _CHUNK, *(0,) * len(tail)),
                                                     packed[k][picks[r, j]])
    return {"path": str(path), "bytes": path.stat().st_size, "groups": groups,
            "histories": groups * h, "steps_per_history": steps,
            "steps": groups * h * steps, "raw_bytes_per_step": raw / _CHUNK,
            "disk_bytes_per_step": path.stat().st_size / (groups * h * steps),
            "write_seconds": time.perf_counter() - t0}


def _file_matches(path: Path, cfg: BenchXLandReaderConfig) -> dict[str, Any] | None:
    """The facts of a file an earlier run wrote with the same settings, else None."""
    meta = path.with_suffix(".json")
    if not (path.is_file() and meta.is_file()):
        return None
    try:
        facts = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    same = facts.get("config") == _file_config(cfg) and facts.get("bytes") == path.stat().st_size
    return facts if same else None


def _file_config(cfg: BenchXLandReaderConfig) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in ("size_gib", "histories_per_group",
                                         "chunks_per_history", "seed")}


# ---------------------------------------------------------------------------- measuring
def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(args: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh process: samples batches and records time and resident memory."""
    from rl_ring.data.samplers import HistoryConfig
    from rl_ring.data.xland import XLandDataset, XLandHistorySampler

    mib = float(1 << 20)
    rss0 = _rss()
    data = XLandDataset(args["path"], cache_mib=args["cache_mib"])
    sampler = XLandHistorySampler(
        data, HistoryConfig(window_steps=args["window_steps"], batch_size=args["batch_size"],
                            seed=args["seed"]), obs_encoding=args["obs_encoding"])
    rss_open = _rss()
    tokens = args["batch_size"] * args["window_steps"]
    out: dict[str, Any] = {"rss_start_mib": rss0 / mib, "rss_after_open_mib": rss_open / mib}
    for mode in ("reads", "batches"):
        times, rss = [], []
        step = 0
        end = time.perf_counter() + args["seconds"]
        while time.perf_counter() < end or len(times) < 3:
            t = time.perf_counter()
            if mode == "reads":
                sampler.windows(sampler.specs_at(step), sampler.host_rows)
            else:
                batch = sampler.batch_at(step)
                del batch
            times.append(time.perf_counter() - t)
            rss.append(_rss() / mib)
            step += 1
        med = float(np.median(times))
        out[mode] = {"batches": len(times), "median_seconds": med,
                     "tokens_per_s": tokens / med, "rss_mib": rss,
                     "seconds": times}
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["batch_values_mib"] = (tokens * sampler.layout.feature_dim * 4) / mib
    out["feature_dim"] = sampler.layout.feature_dim
    data.close()
    return out


def _measure_in_child(args: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.bench.xland_reader", "--measure-json",
         json.dumps(args)], cwd=ROOT, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"measurement process failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plot(result: dict[str, Any], png: Path) -> None:
    plt = common.pyplot()
    m = result["measurement"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = ["file reads only", "TokenBatches"]
    vals = [m["reads"]["tokens_per_s"], m["batches"]["tokens_per_s"]]
    ax.barh([0, 1], vals, color=["C0", "C1"], zorder=2)
    comp = result["train_comparison"]
    if comp.get("status") == "measured":
        train = comp["train_tokens_per_s_max"]
        ax.axvline(train, color="k", ls="--", label=f"training step ({train:,.0f}/s)")
        ax.axvline(5 * train, color="r", ls=":", label="target: 5x training step")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_yticks([0, 1], names)
    ax.set_xscale("log")
    ax.set_xlabel("STEP tokens / s (2 CPU cores, shared machine)")
    f = result["file"]
    ax.set_title(f"{result['config']['batch_size']} x {result['config']['window_steps']} "
                 f"AD windows, {f['bytes'] / (1 << 30):.2f} GiB file")
    for mode, color in (("reads", "C0"), ("batches", "C1")):
        ax2.plot(m[mode]["rss_mib"], color=color, label=mode)
    ax2.axhline(1024, color="r", ls=":", label="target: 1 GiB")
    ax2.axhline(m["peak_rss_mib"], color="k", ls="--", lw=0.8,
                label=f"peak RSS {m['peak_rss_mib']:.0f} MiB")
    ax2.set_xlabel("batch")
    ax2.set_ylabel("resident memory (MiB)")
    ax2.set_ylim(0, max(1100, m["peak_rss_mib"] * 1.1))
    ax2.legend(fontsize=8)
    ax2.set_title("process RSS while sampling")
    fig.tight_layout()
    common.save_png(fig, png)


def run(cfg: BenchXLandReaderConfig) -> dict[str, Any]:
    from experiments.bench.data import train_comparison
    from rl_ring.io import claim_run_dir, write_json

    out = common.resolve_out(cfg.out, ROOT)
    common.check_outputs([out, out.with_suffix(".png")], overwrite=cfg.overwrite,
                         what="the xland_reader benchmark")
    work = claim_run_dir(common.resolve_out(cfg.work_dir, ROOT), kind=RUN_KIND, overwrite=False)
    path = work / f"xland_{cfg.size_gib:g}gib.hdf5"
    facts = _file_matches(path, cfg)
    if facts is None:
        print(f"writing {path} ({cfg.size_gib:g} GiB) ...", flush=True)
        facts = write_file(path, cfg)
        facts["config"] = _file_config(cfg)
        write_json(facts, path.with_suffix(".json"))
    else:
        facts = dict(facts, reused=True)
    print(f"file: {facts['bytes'] / (1 << 30):.2f} GiB, {facts['steps']:,} steps, "
          f"{facts['disk_bytes_per_step']:.2f} bytes/step on disk", flush=True)
    m = _measure_in_child({"path": str(path), "cache_mib": cfg.cache_mib, "seed": cfg.seed,
                           "window_steps": cfg.window_steps, "batch_size": cfg.batch_size,
                           "obs_encoding": cfg.obs_encoding, "seconds": cfg.seconds})
    if not cfg.keep_file:
        path.unlink()
        path.with_suffix(".json").unlink()
    comp = train_comparison([{"name": "xland_batches", "tokens_per_s":
                              m["batches"]["tokens_per_s"]}])
    result = {
        "benchmark": "xland_reader",
        "command": f"rl-ring bench xland_reader --size-gib {cfg.size_gib:g}",
        "config": asdict(cfg),
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                    "load_average": common.load_average()},
        "note": ("timings on a machine shared with other jobs; the file's pages may sit in "
                 "the OS page cache (not counted in RSS)"),
        "file": {k: v for k, v in facts.items() if k != "config"},
        "measurement": m,
        "train_comparison": comp,
        "targets": {
            "peak_rss_under_1gib": m["peak_rss_mib"] < 1024,
            "tokens_per_s_at_least_5x_training": (
                comp.get("xland_batches", 0) >= 5 if comp.get("status") == "measured" else None),
        },
    }
    common.write_result(result, out, plot)
    print(f"batches: {m['batches']['tokens_per_s']:,.0f} tokens/s, reads alone "
          f"{m['reads']['tokens_per_s']:,.0f} tokens/s, peak RSS {m['peak_rss_mib']:.0f} MiB")
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return result


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--measure-json"]:
        print(json.dumps(measure(json.loads(argv[1]))))
        return 0
    import tyro

    cfg = tyro.cli(BenchXLandReaderConfig, args=argv, prog="rl-ring bench xland_reader")
    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
