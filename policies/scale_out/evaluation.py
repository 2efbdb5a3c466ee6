"""Evaluates a saved policy over many episodes on Ray workers.

    from policy_runtime.policies import evaluation
    result = evaluation.evaluate("gs://bucket/policy", episodes=1000, workers=16)
    print(result.summary())

Each worker is a Ray actor that loads the policy once, from its path (any
file system TensorFlow reads), and its environment. A compiled policy
directory (`policies.compile_policy`; a local path on every worker) runs as a
`CompiledPolicy`, and its workers then import no TensorFlow. Episodes are handed out
one or two at a time to whichever worker is free, and episode `i` always
runs with environment seed `seed + i`, so a deterministic policy gives the
same returns whatever the number of workers.

A worker process that dies is restarted by Ray and its unfinished episodes
run again; a worker that keeps dying is dropped and its episodes go to the
others. Each episode is counted once.

This module is its own Bazel target (`//policies:evaluation`) so that
`//policies` does not pull in Ray.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import time
from typing import Any, Callable, Optional, Sequence

import sys

import numpy as np
import ray

from ..runtime import compiled_format
from ..runtime import episodes as episodes_lib
from . import local_ray

ENGINE = "ray"

# Ray restarts a dead worker this many times before its episodes move to the others.
_WORKER_RESTARTS = 3
# Episodes queued on one worker: one running, one ready to start.
_IN_FLIGHT_PER_WORKER = 2
# How often the driver wakes up while waiting (so Ctrl-C is seen promptly).
_POLL_S = 0.5

# Errors a worker reports as themselves rather than as a RuntimeError
# (UnsafeGraphError, a ValueError, is looked up when raised: its module imports TF).
_WORKER_ERRORS = {cls.__name__: cls for cls in (FileNotFoundError, ValueError, TypeError)}


@dataclasses.dataclass(frozen=True)
class EpisodeResult:
  """One episode as a worker ran it."""
  index: int
  seed: int
  total_return: float
  length: int
  seconds: float
  worker: int
  pid: int


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
  """Everything `evaluate` measured. Episodes are ordered by index."""
  episodes: tuple
  workers: int
  env_id: str
  backend: str
  load_time_s: float    # until every worker had loaded the policy
  run_time_s: float     # from the first episode handed out to the last result
  wall_time_s: float    # the whole call, Ray start-up included
  # Per worker: seconds to import what the policy needs and load it (TensorFlow
  # included for a SavedModel), and whether it imported TensorFlow.
  worker_load_s: tuple = ()
  worker_tensorflow: tuple = ()

  @property
  def returns(self) -> np.ndarray:
    return np.array([e.total_return for e in self.episodes])

  @property
  def lengths(self) -> np.ndarray:
    return np.array([e.length for e in self.episodes], dtype=np.int64)

  @property
  def mean_return(self) -> float:
    return float(np.mean(self.returns))

  @property
  def ci95(self) -> float:
    """Half-width of the 95 % confidence interval of the mean return (Student's t)."""
    n = len(self.episodes)
    if n < 2:
      return float("nan")
    import tensorflow_probability as tfp  # pylint: disable=import-outside-toplevel
    t = float(tfp.distributions.StudentT(df=float(n - 1), loc=0.0, scale=1.0).quantile(0.975))
    return t * float(np.std(self.returns, ddof=1)) / math.sqrt(n)

  @property
  def steps(self) -> int:
    return int(self.lengths.sum())

  @property
  def steps_per_s(self) -> float:
    """Environment steps per second of the run, all workers together."""
    return self.steps / self.run_time_s if self.run_time_s > 0 else float("nan")

  @property
  def worker_steps_per_s(self) -> list:
    """Per worker slot: its steps over the seconds it spent in episodes."""
    steps = collections.Counter()
    seconds = collections.Counter()
    for e in self.episodes:
      steps[e.worker] += e.length
      seconds[e.worker] += e.seconds
    return [steps[w] / seconds[w] if seconds[w] > 0 else 0.0 for w in range(self.workers)]

  @property
  def restarts(self) -> int:
    """Worker processes that were replaced during the run (seen from the results)."""
    pids = collections.defaultdict(set)
    for e in self.episodes:
      pids[e.worker].add(e.pid)
    return sum(len(p) - 1 for p in pids.values())

  def to_json(self) -> dict:
    return {
        "engine": ENGINE, "backend": self.backend, "env_id": self.env_id,
        "workers": self.workers, "episodes": len(self.episodes),
        "mean_return": self.mean_return, "ci95": self.ci95,
        "min_return": float(self.returns.min()), "max_return": float(self.returns.max()),
        "steps": self.steps, "steps_per_s": self.steps_per_s,
        "worker_steps_per_s": self.worker_steps_per_s, "restarts": self.restarts,
        "load_time_s": self.load_time_s, "run_time_s": self.run_time_s,
        "wall_time_s": self.wall_time_s, "worker_load_s": list(self.worker_load_s),
        "worker_tensorflow": list(self.worker_tensorflow), "returns": self.returns.tolist(),
        "lengths": self.lengths.tolist(),
    }

  def summary(self) -> str:
    per_worker = ", ".join(f"{r:,.0f}" for r in self.worker_steps_per_s)
    return "\n".join([
        f"environment: {self.env_id}, {len(self.episodes)} episodes, {self.steps:,} steps, "
        f"{self.workers} Ray worker{'s' if self.workers != 1 else ''}, backend {self.backend}",
        f"mean return: {self.mean_return:.1f} ± {self.ci95:.1f} (95% CI), "
        f"min {self.returns.min():.1f}, max {self.returns.max():.1f}",
        f"steps/s: {self.steps_per_s:,.0f} overall; per worker: {per_worker}",
        f"time: {self.wall_time_s:.1f} s (loading {self.load_time_s:.1f} s, "
        f"episodes {self.run_time_s:.1f} s), worker restarts: {self.restarts}",
        f"worker import + load: median {np.median(self.worker_load_s):.2f} s; TensorFlow "
        f"imported on {sum(self.worker_tensorflow)} of {len(self.worker_tensorflow)} workers",
    ])


class WorkerLostError(RuntimeError):
  """Every worker died more often than Ray restarts it."""


class _EpisodeWorker:
  """A Ray actor: one loaded policy and environment, running episodes on request.

  Load errors are kept and returned with each request (not raised in the
  constructor), so the driver reports the worker's own message.
  """

  def __init__(self, model_path: str, env_id: Optional[str], policy_kwargs: dict):
    self._error = None
    started = time.perf_counter()
    try:
      self._policy = _load_policy(model_path, policy_kwargs)
      self._env_id = episodes_lib.env_id_for(self._policy, env_id)
      self._env = episodes_lib.load_env(self._env_id)
    except Exception as e:  # pylint: disable=broad-except
      self._error = (type(e).__name__, str(e))
    self._load_s = time.perf_counter() - started

  def ready(self) -> dict:
    if self._error:
      return {"error": self._error}
    return {"pid": os.getpid(), "env_id": self._env_id, "load_s": self._load_s,
            "tensorflow": "tensorflow" in sys.modules}

  def run_episode(self, worker: int, index: int, seed: int):
    if self._error:
      return {"error": self._error}
    try:
      episode = episodes_lib.run_episode(self._env, self._policy, seed)
    except Exception as e:  # pylint: disable=broad-except
      return {"error": (type(e).__name__, f"episode {index} (seed {seed}): {e}")}
    return EpisodeResult(index, seed, episode.total_return, episode.length, episode.seconds,
                         worker, os.getpid())


def _load_policy(model_path: str, policy_kwargs: dict):
  """A CompiledPolicy for a compiled directory (no TensorFlow), else the SavedModel's."""
  if compiled_format.is_compiled(model_path):
    from ..runtime import compiled  # pylint: disable=import-outside-toplevel
    return compiled.CompiledPolicy(model_path, batch_time_steps=True,
                                   num_threads=policy_kwargs.get("num_threads", 1))
  from .. import saved_model_policy  # pylint: disable=import-outside-toplevel
  return saved_model_policy.SavedModelPyTFEagerPolicy(model_path, **policy_kwargs)


def _raise_worker_error(error: Sequence[str]):
  name, message = error
  if name == "UnsafeGraphError":
    from ..saved_model import graph_audit  # pylint: disable=import-outside-toplevel
    raise graph_audit.UnsafeGraphError(message)
  cls = _WORKER_ERRORS.get(name)
  if cls is None:
    raise RuntimeError(f"{name}: {message}")
  raise cls(message)


def evaluate(model_path: str,
             env_id: Optional[str] = None,
             episodes: int = 100,
             workers: int = 2,
             address: Optional[str] = None,
             backend: str = "tf",
             seed: int = 0,
             on_episode: Optional[Callable[[EpisodeResult], Any]] = None,
             **policy_kwargs) -> EvaluationResult:
  """Runs `episodes` seeded episodes of a saved policy on `workers` Ray actors.

  Args:
    model_path: the `PolicySaver` directory, as the workers see it (local
      path, gs://, s3://, ...), or a compiled policy directory (local path;
      `backend` and `policy_kwargs` other than `num_threads` do not apply).
    env_id: Gymnasium environment id (`gym:ID` for gym 0.23's); default:
      the policy's `env_name` metadata, else CartPole-v0.
    episodes: how many episodes; episode i uses environment seed `seed + i`.
    workers: how many Ray actors (one CPU each).
    address: a Ray cluster to join (e.g. "auto" or "ray://head:10001"). With
      None, a Ray instance already initialized in this process is used (e.g.
      `local_ray.instance()` around several calls), or a local one is started
      for the run and shut down afterwards; its token authentication works
      where the home directory is read-only (see `policies.scale_out.local_ray`).
    backend: the policy's backend on the workers.
    seed: seed of episode 0.
    on_episode: called in the driver with each finished episode (e.g. to
      advance a progress bar).
    **policy_kwargs: passed to `SavedModelPyTFEagerPolicy` on the workers
      (default `load_specs_from_pbtxt=True`).

  Returns:
    An `EvaluationResult` with every episode exactly once.

  Raises:
    FileNotFoundError, ValueError, TypeError, UnsafeGraphError: the policy or
      environment failed to load on a worker (the worker's own message).
    WorkerLostError: every worker died more often than Ray restarts it.
    KeyboardInterrupt: after stopping the workers (and a local instance).
  """
  if episodes < 1:
    raise ValueError(f"episodes: expected at least 1, got {episodes}")
  if workers < 1:
    raise ValueError(f"workers: expected at least 1, got {workers}")
  model_path = os.fspath(model_path)
  policy_kwargs = {"load_specs_from_pbtxt": True, **policy_kwargs, "backend": backend}
  start = time.perf_counter()
  started_here = _connect(address, workers)
  actors = []
  try:
    worker_cls = ray.remote(num_cpus=1, max_restarts=_WORKER_RESTARTS,
                            max_task_retries=_WORKER_RESTARTS)(_EpisodeWorker)
    actors = [worker_cls.remote(model_path, env_id, policy_kwargs) for _ in range(workers)]
    replies = _wait_ready(actors)
    loaded = time.perf_counter()
    results = _run_episodes(actors, episodes, seed, on_episode)
    finished = time.perf_counter()
  finally:
    for actor in actors:
      ray.kill(actor, no_restart=True)
    if started_here:
      ray.shutdown()
  return EvaluationResult(
      episodes=tuple(results[i] for i in range(episodes)), workers=workers,
      env_id=replies[0]["env_id"],
      backend="lite (compiled)" if compiled_format.is_compiled(model_path) else backend,
      load_time_s=loaded - start, run_time_s=finished - loaded,
      wall_time_s=time.perf_counter() - start,
      worker_load_s=tuple(r["load_s"] for r in replies),
      worker_tensorflow=tuple(r["tensorflow"] for r in replies))


def _connect(address: Optional[str], workers: int) -> bool:
  """Connects to Ray; True if this call started (and must stop) the instance."""
  if ray.is_initialized():
    return False
  if address is None:
    local_ray.start(num_cpus=workers)
  else:
    local_ray.connect(address)
  return True


def _wait_ready(actors: list) -> list:
  """Each worker's ready() reply; raises the first worker's load error."""
  pending = {actor.ready.remote(): actor for actor in actors}
  replies = []
  while pending:
    done, _ = ray.wait(list(pending), num_returns=1, timeout=_POLL_S)
    for ref in done:
      del pending[ref]
      reply = ray.get(ref)
      if "error" in reply:
        _raise_worker_error(reply["error"])
      replies.append(reply)
  return replies


def _run_episodes(actors: list, episodes: int, seed: int,
                  on_episode: Optional[Callable[[EpisodeResult], Any]]) -> dict:
  """Hands out episodes to free workers until every index has one result."""
  queue = collections.deque(range(episodes))
  in_flight = {}                       # ref -> (worker slot, episode index)
  load = collections.Counter()         # worker slot -> episodes in flight
  live = set(range(len(actors)))
  results = {}

  def top_up(worker: int) -> None:
    while queue and load[worker] < _IN_FLIGHT_PER_WORKER:
      index = queue.popleft()
      ref = actors[worker].run_episode.remote(worker, index, seed + index)
      in_flight[ref] = (worker, index)
      load[worker] += 1

  for worker in live:
    top_up(worker)
  while len(results) < episodes:
    done, _ = ray.wait(list(in_flight), num_returns=1, timeout=_POLL_S)
    for ref in done:
      worker, index = in_flight.pop(ref)
      load[worker] -= 1
      try:
        reply = ray.get(ref)
      except ray.exceptions.RayActorError:
        # Ray gave up restarting this worker: its episodes go back, first in line.
        live.discard(worker)
        lost = [index]
        for other_ref, (w, i) in list(in_flight.items()):
          if w == worker:
            del in_flight[other_ref]
            lost.append(i)
        queue.extendleft(sorted(lost, reverse=True))
        if not live:
          raise WorkerLostError(f"every worker died more than {_WORKER_RESTARTS} times; "
                                f"{len(queue)} episodes were not run") from None
        for other in live:
          top_up(other)
        continue
      if isinstance(reply, dict):
        _raise_worker_error(reply["error"])
      if index not in results:
        results[index] = reply
        if on_episode is not None:
          on_episode(reply)
      top_up(worker)
  return results
