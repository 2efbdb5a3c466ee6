"""Writes a policy whose object graph the loading process cannot decode.

Run in a separate process: it registers a TypeSpec that only this process
knows and saves, with PolicySaver, an LSTM actor policy with a registered
function returning a value of that spec -- the same failure TF 2.3-2.12
exports of TFP distribution specs hit under TF 2.15 ("The type ... is not
supported by this version of TensorFlow" / "has not been registered").
It also writes a checkpoint with changed weights and reference actions of the
live policy for both weight sets.

    python legacy_export.py OUTPUT_DIR
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.python.framework import type_spec_registry  # noqa: E402
from tf_agents.trajectories import time_step as ts  # noqa: E402

from tools.fixtures import policy_zoo  # noqa: E402


@type_spec_registry.register("legacy_test.WrappedSpec")
class WrappedSpec(tf.TypeSpec):
  """A TypeSpec registered only in this (saving) process."""

  def __init__(self, spec):
    self._spec = spec

  value_type = property(lambda self: Wrapped)
  _component_specs = property(lambda self: self._spec)

  def _serialize(self):
    return (self._spec,)

  def _to_components(self, value):
    return value.tensor

  def _from_components(self, tensor):
    return Wrapped(tensor)


class Wrapped(tf.__internal__.CompositeTensor):

  def __init__(self, tensor):
    self.tensor = tensor

  @property
  def _type_spec(self):
    return WrappedSpec(tf.TensorSpec.from_tensor(self.tensor))


def reference_inputs(count=4):
  rng = np.random.default_rng(7)
  steps = []
  for i in range(count):
    obs = {"position": rng.standard_normal((1, 3)).astype(np.float32),
           "velocity": rng.standard_normal((1, 2)).astype(np.float32)}
    steps.append(ts.TimeStep(np.full((1,), 0 if i == 0 else 1, np.int32),
                             np.zeros((1,), np.float32), np.ones((1,), np.float32), obs))
  return steps


def rollout(policy):
  state = policy.get_initial_state(1)
  actions = []
  for step in reference_inputs():
    out = policy.action(tf.nest.map_structure(tf.constant, step), state)
    actions.append(out.action.numpy()[0])
    state = out.state
  return np.stack(actions)


def main(out_dir):
  policy = policy_zoo.lstm_actor_policy()
  saver = policy_zoo.make_saver(policy, train_step=42)
  saver.register_function("wrapped", lambda x: Wrapped(x * 2), tf.TensorSpec([4], tf.float32))
  saver.save(os.path.join(out_dir, "policy"))
  before = rollout(policy)
  for v in policy.variables():
    v.assign(v * -1.5)
  saver.save_checkpoint(os.path.join(out_dir, "policy_checkpoint_0000000077"))
  after = rollout(policy)
  steps = reference_inputs()
  np.savez(os.path.join(out_dir, "reference.npz"), before=before, after=after,
           step_type=np.stack([s.step_type for s in steps]),
           reward=np.stack([s.reward for s in steps]),
           discount=np.stack([s.discount for s in steps]),
           position=np.stack([s.observation["position"] for s in steps]),
           velocity=np.stack([s.observation["velocity"] for s in steps]))


if __name__ == "__main__":
  main(sys.argv[1])
