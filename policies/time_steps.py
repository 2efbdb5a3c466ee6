"""TF-Agents' numpy `TimeStep`s without TensorFlow (for TF-free episode loops).

`TimeStep` has TF-Agents' fields (and `is_first`/`is_mid`/`is_last`), and
`restart`, `transition`, `termination` and `truncation` build the same numpy
values as `tf_agents.trajectories.time_step` does for unbatched steps:
int32 step types, float32 rewards and discounts.
"""

from __future__ import annotations

import collections

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


def restart(observation) -> TimeStep:
  return TimeStep(FIRST, _float32(0.0), _float32(1.0), observation)


def transition(observation, reward, discount=1.0) -> TimeStep:
  return TimeStep(MID, _float32(reward), _float32(discount), observation)


def termination(observation, reward) -> TimeStep:
  return TimeStep(LAST, _float32(reward), _float32(0.0), observation)


def truncation(observation, reward, discount=1.0) -> TimeStep:
  return TimeStep(LAST, _float32(reward), _float32(discount), observation)
