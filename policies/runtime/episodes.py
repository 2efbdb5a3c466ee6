"""Seeded episodes of a `PyPolicy` in a Gymnasium (or gym 0.23) environment.

The one episode loop shared by `policy_cli run` and the Ray evaluation
workers, so both count returns, lengths and seeds the same way.

Environment ids are Gymnasium's (`CartPole-v1`); `gym:CartPole-v1` picks the
same id from gym 0.23 through TF-Agents' `suite_gym`, as TF-Agents' own
drivers see it. Both register the classic ids, so the prefix is how a user
chooses. Either way an episode run with `seed` starts from
`reset(seed=seed)` (gym: `seed(seed)` then `reset()`), and steps are
TF-Agents time steps: termination has discount 0, truncation (a time limit)
discount 1. Gymnasium episodes need no TensorFlow (`policies.runtime.time_steps`),
so TF-free workers run them with a compiled policy.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from typing import Optional

import numpy as np

from . import time_steps

DEFAULT_ENV = "CartPole-v0"
GYM_PREFIX = "gym:"


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


class GymnasiumEnvironment:
  """A Gymnasium environment that steps in TF-Agents time steps (numpy)."""

  def __init__(self, env_id: str):
    import gymnasium  # pylint: disable=import-outside-toplevel
    try:
      with warnings.catch_warnings():
        if env_id == DEFAULT_ENV:   # v0 on purpose: its 200-step limit; no "out of date" nag
          warnings.filterwarnings("ignore", message=".*is out of date", category=DeprecationWarning)
        self._env = gymnasium.make(env_id)
    except gymnasium.error.Error as e:
      raise ValueError(f"env_id: no Gymnasium environment {env_id!r} ({e}); "
                       f"'{GYM_PREFIX}{env_id}' picks gym's") from None
    self._ts = time_steps
    self._space = self._env.observation_space

  def reset(self, seed: int):
    observation, _ = self._env.reset(seed=seed)
    return self._ts.restart(_as_space_dtype(observation, self._space))

  def step(self, action):
    observation, reward, terminated, truncated, _ = self._env.step(action)
    observation = _as_space_dtype(observation, self._space)
    if terminated:
      return self._ts.termination(observation, np.float32(reward))
    if truncated:
      return self._ts.truncation(observation, np.float32(reward))
    return self._ts.transition(observation, np.float32(reward))


class GymEnvironment:
  """A gym 0.23 environment through TF-Agents' `suite_gym` (its own conversions)."""

  def __init__(self, env_id: str):
    from ..saved_model import quiet_gym  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    import gym  # pylint: disable=import-outside-toplevel
    from tf_agents.environments import suite_gym  # pylint: disable=import-outside-toplevel
    try:
      self._env = suite_gym.load(env_id)
    except gym.error.Error as e:
      raise ValueError(f"env_id: no gym environment {env_id!r} ({e})") from None

  def reset(self, seed: int):
    self._env.seed(seed)
    return self._env.reset()

  def step(self, action):
    return self._env.step(action)


def load_env(env_id: str):
  """The environment `env_id` (Gymnasium's, or gym's with the `gym:` prefix).

  Raises:
    ValueError: no environment of that id is registered.
  """
  if env_id.startswith(GYM_PREFIX):
    return GymEnvironment(env_id[len(GYM_PREFIX):])
  return GymnasiumEnvironment(env_id)


def _as_space_dtype(observation, space):
  """The observation with its space's dtypes (as TF-Agents' gym wrapper casts them)."""
  if isinstance(observation, dict):
    return {k: _as_space_dtype(v, space[k]) for k, v in observation.items()}
  if isinstance(observation, tuple):
    return tuple(_as_space_dtype(v, s) for v, s in zip(observation, space))
  dtype = getattr(space, "dtype", None)
  return np.asarray(observation, dtype=dtype)


def run_episode(env, policy, seed: int, latencies: Optional[list] = None) -> Episode:
  """Runs one episode from `env.reset(seed)` until the last step.

  Args:
    env: an environment from `load_env`.
    policy: a `PyPolicy` taking unbatched time steps.
    seed: the environment's seed for this episode.
    latencies: if given, each `action()` call's seconds are appended.
  """
  start = time.perf_counter()
  step = env.reset(seed)
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
