"""The env registry: one id per environment, one ``make`` for all of them.

Id families:

* ``dmc:<domain>-<task>``: every dm_control suite task (``dmc:walker-run``,
  ``dmc:cartpole-swingup``, ...) plus ExoRL's own domains ``dmc:point_mass_maze-reach_*``
  (:mod:`envs.point_mass_maze`) and ``dmc:jaco-reach_*`` (:mod:`envs.jaco`), imported only
  when used. Observations in ExoRL's flat layout (:mod:`envs.dmc`). Options may follow the
  task: ``:ar<k>`` holds each action for k control steps, ``:t<seconds>`` shortens the time
  limit (``dmc:cartpole-swingup:ar8:t4`` = 50 steps of 0.08 s), so every tool that takes an
  env id (collect, eval, the checkpoint's env) agrees on the shortened task.
* ``gym:<id>``: any Gymnasium id (``gym:HalfCheetah-v5``), built by ``gymnasium.make``.
* in-context task families: ``darkroom``, ``darkroom-hard``, ``keydoor``, ``bandit``,
  ``bandit-10``, ``bandit-hard``, ``bandit-gauss``, whose ``task`` argument picks the goal /
  key and door / arm means.
* ``xland:<xminigrid id>[:<benchmark>]``: XLand-MiniGrid (:mod:`envs.xland`); ``XLand-MiniGrid-*``
  ids are in-context families whose task is a ruleset index, ``MiniGrid-*`` ids single tasks.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import EnvSpec

from envs import bandit, darkroom, keydoor, xland

#: ExoRL domains defined in this package (module, tasks).
CUSTOM_DMC: dict[str, tuple[str, tuple[str, ...]]] = {
    "point_mass_maze": (
        "envs.point_mass_maze",
        ("reach_top_left", "reach_top_right", "reach_bottom_left", "reach_bottom_right"),
    ),
    "jaco": (
        "envs.jaco",
        ("reach_top_left", "reach_top_right", "reach_bottom_left", "reach_bottom_right"),
    ),
}

#: The ids documented in the README; ``list_envs`` returns these and every other valid id.
FEATURED = (
    "dmc:walker-stand",
    "dmc:walker-walk",
    "dmc:walker-run",
    "dmc:cheetah-run",
    "dmc:cartpole-balance",
    "dmc:cartpole-swingup",
    "dmc:quadruped-walk",
    "dmc:quadruped-run",
    "dmc:point_mass-easy",
    "dmc:pendulum-swingup",
    "dmc:point_mass_maze-reach_top_left",
    "dmc:jaco-reach_top_left",
    "gym:HalfCheetah-v5",
    "gym:Hopper-v5",
    "gym:Walker2d-v5",
    "darkroom",
    "darkroom-hard",
    "keydoor",
    "bandit",
    "bandit-10",
    "bandit-hard",
    "bandit-gauss",
)

#: D4RL reference-score names (``rl_ring.data.scores``) of the Gymnasium MuJoCo envs.
_GYM_SCORE_NAMES = {"HalfCheetah": "halfcheetah", "Hopper": "hopper", "Walker2d": "walker2d"}


class UnknownEnvError(KeyError, ValueError):
    """An env id that is not in the registry; the message lists close matches and the ids."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class InContextFamily:
    """How to build and describe one in-context task family."""

    cls: type
    """The env class (:class:`envs.darkroom.DarkRoom`, ...)."""
    kwargs: dict[str, Any]
    """Constructor arguments that define the variant (room size, arm count, ...)."""
    split: Callable[[str], list[int]]
    """``split(name) -> task ids`` for "train" / "test" / "all"."""
    optimal: Callable[[int], float]
    """``optimal(task) -> optimal (expected) return``."""
    description: str
    """One line for ``env_info``."""
    time_limit: bool = True
    """Episodes end at ``episode_length`` by a time limit (truncated). False for bandits, whose
    last pull terminates the episode: their spec carries no ``max_episode_steps``, or
    ``gymnasium.make(env.spec)`` would add a TimeLimit reporting that pull truncated too."""


IN_CONTEXT: dict[str, InContextFamily] = {
    "darkroom": InContextFamily(
        darkroom.DarkRoom,
        {},
        lambda s: darkroom.task_split(s),
        lambda t: darkroom.optimal_return(t),
        "9x9 Dark Room, 20 steps, reward 1 per step on the goal; task = goal cell id",
    ),
    "darkroom-hard": InContextFamily(
        darkroom.DarkRoom,
        {"size": 17, "hard": True},
        lambda s: darkroom.task_split(s, size=17),
        lambda t: darkroom.optimal_return(t, size=17, hard=True),
        "17x17 Dark Room, 20 steps, reward 1 only on first reaching the goal",
    ),
    "keydoor": InContextFamily(
        keydoor.KeyDoor,
        {},
        lambda s: keydoor.task_split(s),
        lambda t: keydoor.optimal_return(t),
        "9x9 Key-to-Door, 50 steps, reward 1 for the key then 1 for the door (ends the episode)",
    ),
    "bandit": InContextFamily(
        bandit.Bandit,
        {"arms": 5},
        lambda s: bandit.task_split(s),
        lambda t: bandit.optimal_return(t, arms=5),
        "5-armed Bernoulli bandit, one pull per episode; task = seeded arm means",
        time_limit=False,
    ),
    "bandit-10": InContextFamily(
        bandit.Bandit,
        {"arms": 10},
        lambda s: bandit.task_split(s),
        lambda t: bandit.optimal_return(t, arms=10),
        "10-armed Bernoulli bandit, one pull per episode; task = seeded arm means",
        time_limit=False,
    ),
    "bandit-hard": InContextFamily(
        bandit.Bandit,
        bandit.HARD_BERNOULLI.to_dict(),
        lambda s: bandit.task_split(s, num_tasks=bandit.HARD_BERNOULLI.num_tasks),
        lambda t: float(bandit.HARD_BERNOULLI.means(t).max()),
        "20-armed Bernoulli bandit, success probabilities in [0.3, 0.7), one pull per episode",
        time_limit=False,
    ),
    "bandit-gauss": InContextFamily(
        bandit.Bandit,
        bandit.HARD_GAUSSIAN.to_dict(),
        lambda s: bandit.task_split(s, num_tasks=bandit.HARD_GAUSSIAN.num_tasks),
        lambda t: float(bandit.HARD_GAUSSIAN.means(t).max()),
        "20-armed Gaussian bandit, means N(0, 0.2^2), unit reward noise, one pull per episode",
        time_limit=False,
    ),
}


@dataclass(frozen=True)
class EnvInfo:
    """What an env looks like, without having to step it."""

    env_id: str
    """The registry id."""
    family: str
    """"dmc", "gym" or "in-context"."""
    observation_shape: tuple[int, ...]
    """Shape of one observation (float32)."""
    action_space: dict[str, Any]
    """``{"type": "discrete", "n": 5}`` or ``{"type": "box", "low": [...], "high": [...]}``."""
    max_episode_steps: int | None
    """Episode length cap (time limit); episodes may end earlier by termination."""
    in_context: bool
    """Whether ``task`` picks one of many tasks (``task_split`` applies)."""
    num_tasks: int | None
    """Number of task ids of an in-context family."""
    reference_scores: str | None
    """Name for ``rl_ring.data.scores`` normalisation ("halfcheetah", ...), or
    "optimal_return" for in-context families (normalise by ``optimal_return``)."""
    description: str
    """One line about the env."""


# ---------------------------------------------------------------------- id parsing
def _suite_tasks() -> list[tuple[str, str]]:
    from dm_control import suite

    return list(suite.ALL_TASKS)


def _dmc_ids() -> list[str]:
    ids = [f"dmc:{d}-{t}" for d, t in _suite_tasks()]
    ids += [f"dmc:{d}-{t}" for d, (_, tasks) in CUSTOM_DMC.items() for t in tasks]
    return ids


def _gym_ids() -> list[str]:
    return [f"gym:{i}" for i in gym.registry]


def list_envs() -> list[str]:
    """Every valid id: the featured ones first, then the rest, sorted."""
    xland_ids = {f"xland:{i}" for i in xland.xminigrid_ids()}
    rest = sorted((set(_dmc_ids()) | set(_gym_ids()) | set(IN_CONTEXT) | xland_ids)
                  - set(FEATURED))
    return list(FEATURED) + rest


def _unknown(env_id: str, candidates: list[str], what: str) -> UnknownEnvError:
    close = difflib.get_close_matches(env_id, candidates, n=5, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return UnknownEnvError(
        f"unknown {what} {env_id!r}.{hint} Known ids include: {', '.join(FEATURED)}; "
        "in general 'dmc:<domain>-<task>' for any dm_control suite task, 'gym:<id>' for any "
        "Gymnasium id, 'xland:<xminigrid id>' for XLand-MiniGrid, and the in-context families "
        f"{', '.join(IN_CONTEXT)} (envs.list_envs() lists them all)."
    )


_DMC_OPTION = re.compile(r"ar(?P<action_repeat>\d+)|t(?P<time_limit>\d+(?:\.\d+)?)")


def split_options(env_id: str) -> tuple[str, dict[str, Any]]:
    """``(base id, options)`` of an id with dm_control options (``dmc:cartpole-swingup:ar8:t4``).

    Options are ``:ar<k>`` (``action_repeat=k``) and ``:t<seconds>`` (``time_limit``), each
    at most once; ids without options come back unchanged with ``{}``.

    Raises:
        ValueError: an option on a non-dm_control id, an unknown or repeated option.
    """
    if not isinstance(env_id, str):
        raise TypeError(f"env id must be a string, got {type(env_id).__name__}")
    if not env_id.startswith("dmc:"):
        return env_id, {}
    base, *parts = env_id[4:].split(":")
    options: dict[str, Any] = {}
    for part in parts:
        m = _DMC_OPTION.fullmatch(part)
        if m is None:
            raise ValueError(
                f"{env_id}: unknown option {part!r}; dm_control ids take ':ar<k>' (action "
                "repeat) and ':t<seconds>' (time limit), e.g. dmc:cartpole-swingup:ar8:t4"
            )
        key = "action_repeat" if m["action_repeat"] is not None else "time_limit"
        if key in options:
            raise ValueError(f"{env_id}: option {key} given twice")
        value = m[key]
        options[key] = int(value) if key == "action_repeat" else float(value)
    return f"dmc:{base}", options


def base_id(env_id: str) -> str:
    """``env_id`` without its dm_control options (scripted controllers are per base task)."""
    return split_options(env_id)[0]


def _parse(env_id: str) -> tuple[str, Any]:
    """Returns (family, detail) or raises UnknownEnvError; dm_control options are ignored."""
    env_id = split_options(env_id)[0]
    if env_id in IN_CONTEXT:
        return "in-context", IN_CONTEXT[env_id]
    if env_id.startswith("dmc:"):
        domain, sep, task = env_id[4:].partition("-")
        if sep and domain in CUSTOM_DMC and task in CUSTOM_DMC[domain][1]:
            return "dmc", (domain, task)
        if sep and (domain, task) in set(_suite_tasks()):
            return "dmc", (domain, task)
        raise _unknown(env_id, _dmc_ids(), "dm_control env id")
    if env_id.startswith("xland:"):
        return _parse_xland(env_id)
    if env_id.startswith("gym:"):
        name = env_id[4:]
        if name in gym.registry:
            return "gym", name
        raise _unknown(env_id, _gym_ids(), "Gymnasium env id")
    raise _unknown(env_id, list_envs(), "env id")


@functools.cache
def _parse_xland(env_id: str) -> tuple[str, Any]:
    """XLand ids are in-context families built on the fly (task = ruleset index of the id's
    benchmark); MiniGrid ids are the single-task family "xland"."""
    try:
        xid, spec = xland.parse_id(env_id)
    except xland.UnknownXMinigridId as err:
        raise UnknownEnvError(str(err)) from None
    if spec is None:
        return "xland", xid
    family = InContextFamily(
        xland.XLandEnv,
        {"xid": xid, "benchmark": spec},
        lambda s: xland.task_split(spec, s),
        lambda t: 1.0,  # an upper bound: the reward on reaching the goal is 1 - 0.9 t / T
        xland.description(env_id),
    )
    return "in-context", family


# ---------------------------------------------------------------------- construction
def _dmc_loader(domain: str, task: str, kwargs: dict[str, Any]) -> Callable[[int | None], Any]:
    task_kwargs = dict(kwargs.pop("task_kwargs", {}) or {})
    env_kwargs = dict(kwargs.pop("environment_kwargs", {}) or {})
    if domain in CUSTOM_DMC:
        module_name = CUSTOM_DMC[domain][0]

        def load_custom(seed):
            try:
                module = importlib.import_module(module_name)
            except ImportError as err:
                raise ImportError(
                    f"dmc:{domain}-{task} needs {module_name}, which cannot be imported ({err})"
                ) from err
            return _load_from_module(module, domain, task, seed, task_kwargs, env_kwargs)

        return load_custom

    def load_suite(seed):
        from dm_control import suite

        return suite.load(
            domain,
            task,
            task_kwargs={**task_kwargs, "random": seed},
            environment_kwargs=env_kwargs or None,
        )

    return load_suite


def _load_from_module(module, domain, task, seed, task_kwargs, env_kwargs):
    """Builds a task of a custom domain module: a suite-style ``SUITE`` or a ``make``/``load``."""
    suite_tasks = getattr(module, "SUITE", None)
    if suite_tasks is not None and task in suite_tasks:
        kwargs = {**task_kwargs, "random": seed}
        if env_kwargs:
            kwargs["environment_kwargs"] = env_kwargs
        return suite_tasks[task](**kwargs)
    for name in ("make", "load"):
        fn = getattr(module, name, None)
        if callable(fn):
            return fn(task, seed=seed, **task_kwargs)
    raise ImportError(
        f"{module.__name__}: expected a SUITE of tasks (holding {task!r}) or a "
        f"make(task, seed=...) function to build dmc:{domain}-{task}"
    )


def load_dmc(domain: str, task: str, *, seed: int | None = 0) -> Any:
    """The raw dm_control environment of ``dmc:<domain>-<task>``, built as :func:`make` builds
    it (suite task or this package's custom domain); reward relabelling uses its physics.

    Raises:
        UnknownEnvError: no such dm_control task.
    """
    _, detail = _parse(f"dmc:{domain}-{task}")
    return _dmc_loader(*detail, {})(seed)


class _SeedFirstReset(gym.Wrapper):
    """Seeds the first ``reset()`` (and the action space) with the seed given to ``make``."""

    def __init__(self, env: gym.Env, seed: int) -> None:
        super().__init__(env)
        self._pending_seed: int | None = int(seed)
        env.action_space.seed(int(seed))

    def reset(self, *, seed=None, options=None):
        if seed is None:
            seed = self._pending_seed
        self._pending_seed = None
        return self.env.reset(seed=seed, options=options)


def make(env_id: str, *, task: int | None = None, seed: int | None = None, **kwargs) -> gym.Env:
    """Builds an environment.

    Args:
        env_id: a registry id (see :func:`list_envs`).
        task: task id of an in-context family (:func:`task_split`); None draws a task at
            each reset. Must be None for other envs (their task is part of the id).
        seed: seeds the env; the first ``reset()`` without a seed uses it, so
            ``make(id, seed=s).reset()`` is reproducible.
        **kwargs: passed to the env: ``render_mode="rgb_array"`` for any env;
            ``render_size=(h, w)``, ``camera_id``, ``task_kwargs``, ``environment_kwargs``,
            ``action_repeat``, ``time_limit`` (seconds) for dm_control (or as id options,
            ``dmc:cartpole-swingup:ar8:t4``); Gymnasium keyword arguments for ``gym:`` ids;
            ``size``, ``episode_length``, ... for the in-context families.

    Raises:
        UnknownEnvError: (a KeyError and a ValueError) for an unknown id.
        ValueError: a task for an env that has none, or an invalid task id.
    """
    family, detail = _parse(env_id)
    spec_kwargs = {"env_id": env_id, "task": task, **kwargs}
    _, options = split_options(env_id)
    clash = sorted(set(options) & set(kwargs))
    if clash:
        raise ValueError(f"{env_id}: {clash} given both in the id and as keyword arguments")
    if family != "in-context" and task is not None:
        raise ValueError(
            f"{env_id}: task={task!r} given, but only in-context families take a task "
            f"({', '.join(IN_CONTEXT)}); a dm_control or Gymnasium task is part of the id"
        )
    if family == "in-context":
        env = detail.cls(task, seed=seed, **{**detail.kwargs, **kwargs})
        max_steps = env.episode_length if detail.time_limit else None
    elif family == "xland":
        env = xland.XLandEnv(None, xid=detail, seed=seed, **kwargs)
        max_steps = env.episode_length
    elif family == "dmc":
        domain, dmc_task = detail
        from envs.dmc import DMCEnv

        loader = _dmc_loader(domain, dmc_task, kwargs)
        env = DMCEnv(loader, env_id=env_id, seed=seed, **options, **kwargs)
        max_steps = env.step_limit
    else:
        env = gym.make(detail, **kwargs)
        if seed is not None:
            env = _SeedFirstReset(env, seed)
        return env
    # A spec that gymnasium.make can rebuild from (the env checker and vector envs do).
    env.spec = EnvSpec(
        # Gymnasium's id grammar has no '/' or '=' (an xland benchmark path); the exact id
        # travels in kwargs, from which gymnasium.make(env.spec) rebuilds the env.
        id=re.sub(r"[^\w:.-]", "_", env_id),
        entry_point="envs.registry:make",
        kwargs=spec_kwargs,
        max_episode_steps=max_steps,
    )
    return env


# ---------------------------------------------------------------------- descriptions
def space_dict(space: gym.Space) -> dict[str, Any]:
    """An action/observation space as the JSON dict EpisodeStore metadata uses."""
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "discrete", "n": int(space.n)}
    if isinstance(space, gym.spaces.Box):
        return {
            "type": "box",
            "low": np.asarray(space.low, dtype=np.float64).tolist(),
            "high": np.asarray(space.high, dtype=np.float64).tolist(),
        }
    raise ValueError(f"unsupported space {space!r}: expected Discrete or Box")


@functools.cache
def env_info(env_id: str) -> EnvInfo:
    """Spaces, episode length, task family facts and score reference of an env."""
    family, detail = _parse(env_id)
    env = make(env_id)
    try:
        spec = getattr(env, "spec", None)
        max_steps = spec.max_episode_steps if spec is not None else None
        in_context = family == "in-context"
        if in_context:
            max_steps = env.episode_length  # a bandit's horizon is its length, not a limit
            ref, desc, ntasks = "optimal_return", detail.description, len(detail.split("all"))
        elif family == "xland":
            ref, ntasks, desc = None, None, xland.description(env_id)
        elif family == "dmc":
            ref, ntasks = None, None
            desc = f"dm_control {detail[0]} {detail[1]}, ExoRL flat observations"
        else:
            base = detail.split("-v")[0]
            ref, ntasks = _GYM_SCORE_NAMES.get(base), None
            desc = f"Gymnasium {detail}"
        return EnvInfo(
            env_id=env_id,
            family=family,
            observation_shape=tuple(int(n) for n in env.observation_space.shape),
            action_space=space_dict(env.action_space),
            max_episode_steps=max_steps,
            in_context=in_context,
            num_tasks=ntasks,
            reference_scores=ref,
            description=desc,
        )
    finally:
        env.close()


def task_split(env_id: str, split: str) -> list[int]:
    """The fixed task ids of ``split`` ("train", "test" = held out, or "all").

    Raises:
        ValueError: ``env_id`` is not an in-context family, or ``split`` is unknown.
    """
    family, detail = _parse(env_id)
    if family != "in-context":
        raise ValueError(
            f"{env_id}: task_split applies to the in-context families {', '.join(IN_CONTEXT)}"
        )
    return list(_split(env_id, split))


def task_subset(env_id: str, split: str, k: int = 0) -> list[int]:
    """The first ``k`` tasks of ``split`` after a fixed shuffle, sorted (all when ``k`` is 0):
    the same subset for every caller (experiments and ``rl-ring collect --num-tasks``).

    Raises:
        ValueError: ``k`` is negative or larger than the split.
    """
    tasks = task_split(env_id, split)
    if k < 0 or k > len(tasks):
        raise ValueError(f"num_tasks={k}: {env_id} has {len(tasks)} {split} tasks")
    if not k:
        return tasks
    return sorted(np.random.default_rng(1234).permutation(tasks)[:k].tolist())


@functools.cache
def _task_set(env_id: str) -> frozenset[int]:
    return frozenset(_split(env_id, "all"))


@functools.cache
def _split(env_id: str, split: str) -> tuple[int, ...]:
    family, detail = _parse(env_id)
    return tuple(detail.split(split))


def optimal_return(env_id: str, task: int) -> float:
    """Optimal (expected, for bandits) return of ``task`` of an in-context family."""
    family, detail = _parse(env_id)
    if family != "in-context":
        raise ValueError(f"{env_id}: optimal_return applies to the in-context families")
    if int(task) not in _task_set(env_id):
        raise ValueError(f"{env_id}: {task} is not a task id (see task_split({env_id!r}, 'all'))")
    return detail.optimal(int(task))
