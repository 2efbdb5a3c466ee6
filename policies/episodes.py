"""Seeded episodes of a `PyPolicy` in a TF-Agents Gym environment.

The one episode loop shared by `policy_cli run` and the Ray evaluation
workers, so both count returns, lengths and seeds the same way.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Optional

DEFAULT_ENV = "CartPole-v0"


@dataclasses.dataclass(frozen=True)
class Episode:
  """One finished episode: its undiscounted return, its steps, its duration."""
  total_return: float
  length: int
  seconds: float


def env_id_for(policy, requested: Optional[str] = None) -> str:
  """`requested`, else the policy's `env_name` metadata, else `DEFAULT_ENV`."""
  if requested:
    return requested
  env_name = policy.get_metadata().get("env_name")
  return env_name.item().decode() if env_name is not None else DEFAULT_ENV


def load_env(env_id: str):
  """The Gym environment `env_id` as a TF-Agents `PyEnvironment`.

  Raises:
    ValueError: no environment of that id is registered.
  """
  import gym  # pylint: disable=import-outside-toplevel
  from tf_agents.environments import suite_gym  # pylint: disable=import-outside-toplevel
  try:
    return suite_gym.load(env_id)
  except gym.error.Error as e:
    raise ValueError(f"env_id: no Gym environment {env_id!r} ({e})") from None


def run_episode(env, policy, seed: int, latencies: Optional[list] = None) -> Episode:
  """Runs one episode from `env.seed(seed); env.reset()` until the last step.

  Args:
    env: a TF-Agents `PyEnvironment` with a `seed` method.
    policy: a `PyPolicy` taking unbatched time steps.
    seed: the environment's seed for this episode.
    latencies: if given, each `action()` call's seconds are appended.
  """
  start = time.perf_counter()
  env.seed(seed)
  step = env.reset()
  state = policy.get_initial_state()
  total, length = 0.0, 0
  while not step.is_last():
    if latencies is None:
      out = policy.action(step, state)
    else:
      call_start = time.perf_counter()
      out = policy.action(step, state)
      latencies.append(time.perf_counter() - call_start)
    state = out.state
    step = env.step(out.action)
    total += float(step.reward)
    length += 1
  return Episode(total, length, time.perf_counter() - start)
