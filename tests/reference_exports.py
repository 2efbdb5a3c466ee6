"""Committed exports saved by another TensorFlow (tests/fixtures/<tf>/<name>), with what
that TensorFlow computed on them (tools/fixtures/make_cross_version_exports.py,
tools/fixtures/legacy_exports/make_tf24_exports.py)."""

import os

import numpy as np
import tensorflow as tf
from tf_agents.trajectories import time_step as ts

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def reference(tf_version: str, name: str):
  """(export dir, checkpoint dir, reference arrays) of fixtures/<tf_version>/<name>."""
  root = os.path.join(FIXTURES, tf_version, name)
  data = np.load(os.path.join(root, "reference.npz"))
  return os.path.join(root, "export"), os.path.join(root, "checkpoint"), data


def steps(policy, data) -> list:
  """The reference observations as unbatched time steps: a restart, then transitions."""
  count = len(tf.nest.flatten(policy.time_step_spec.observation))
  flat = [data[f"obs/{i}"] for i in range(count)]
  observations = tf.nest.pack_sequence_as(policy.time_step_spec.observation, flat)
  result = []
  for i in range(len(flat[0])):
    obs = tf.nest.map_structure(lambda o, i=i: o[i], observations)
    result.append(ts.restart(obs) if i == 0 else ts.transition(obs, np.float32(0)))
  return result


def act(policy, time_steps, batched: bool = False) -> np.ndarray:
  """Actions stepping through `time_steps` in order, the state carried.

  With `batched`, each step goes in as a batch of 1 (batch_time_steps=False).
  """
  state = policy.get_initial_state(1) if batched else policy.get_initial_state()
  actions = []
  for step in time_steps:
    if batched:
      step = tf.nest.map_structure(lambda x: np.asarray(x)[None], step)
    out = policy.action(step, state)
    state = out.state
    actions.append(out.action[0] if batched else out.action)
  return np.stack(actions)


def assert_actions(got, expected, exact: bool, message: str = ""):
  if exact:
    np.testing.assert_array_equal(got, expected, err_msg=message)
  else:
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=message)
