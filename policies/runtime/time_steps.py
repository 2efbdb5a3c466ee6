"""TF-Agents' numpy `TimeStep`s without TensorFlow (for TF-free episode loops).

`TimeStep` has TF-Agents' fields (and `is_first`/`is_mid`/`is_last`), and
`restart`, `transition`, `termination` and `truncation` build the same numpy
values as `tf_agents.trajectories.time_step` does: int32 step types, float32
rewards and discounts. Batched steps (for `batch_time_steps=False` policies)
come from `restart(observation, batch_size=n)` and, for the others, from a
batch of rewards, as in TF-Agents.
"""

from __future__ import annotations

import collections
from typing import Optional

import numpy as np

FIRST = np.asarray(0, dtype=np.int32)
MID = np.asarray(1, dtype=np.int32)
LAST = np.asarray(2, dtype=np.int32)


class TimeStep(collections.namedtuple("TimeStep",
                                      ["step_type", "reward", "discount", "observation"])):
  """One step of an environment, as TF-Agents' `TimeStep`."""
  __slots__ = ()

  def is_first(self):
    return np.equal(self.step_type, FIRST)

  def is_mid(self):
    return np.equal(self.step_type, MID)

  def is_last(self):
    return np.equal(self.step_type, LAST)


def _float32(value) -> np.ndarray:
  return np.asarray(value, dtype=np.float32)


def restart(observation, batch_size: Optional[int] = None) -> TimeStep:
  if batch_size is None:
    return TimeStep(FIRST, _float32(0.0), _float32(1.0), observation)
  return TimeStep(np.full(batch_size, FIRST, dtype=np.int32), np.zeros(batch_size, np.float32),
                  np.ones(batch_size, np.float32), observation)


def _step_types(step_type: np.ndarray, reward: np.ndarray) -> np.ndarray:
  """`step_type` for each reward of a batch (TF-Agents infers the batch from the reward)."""
  return np.tile(step_type, reward.shape) if reward.shape else step_type


def transition(observation, reward, discount=1.0) -> TimeStep:
  reward = _float32(reward)
  return TimeStep(_step_types(MID, reward), reward, _float32(discount), observation)


def termination(observation, reward) -> TimeStep:
  reward = _float32(reward)
  if not reward.shape:
    return TimeStep(LAST, reward, _float32(0.0), observation)
  batch_size = reward.shape[0]
  return TimeStep(np.tile(LAST, batch_size), reward, np.zeros(batch_size, np.float32), observation)


def truncation(observation, reward, discount=1.0) -> TimeStep:
  reward = _float32(reward)
  return TimeStep(_step_types(LAST, reward), reward, _float32(discount), observation)
