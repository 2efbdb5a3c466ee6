"""Writes small PolicySaver exports with this process's TensorFlow, for the other stack's tests.

    .venv-py313/bin/python -m tools.make_cross_version_exports tests/fixtures/tf2_21

Run once per TensorFlow version whose exports the suite must load elsewhere
(the output is committed, so the suite needs no second TensorFlow to make
it). For each policy it writes, under `<out>/<name>/`: `export/` (with
`policy_specs.pbtxt`), `checkpoint/` (a `save_checkpoint` whose weights are
the export's negated) and `reference.npz`: sampled observations and the
actions this TensorFlow's policy takes on them, stepping through them in
order with its state carried, with the export's and the checkpoint's weights.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from tools import tf_agents_keras  # noqa: E402

tf_agents_keras.select_keras_2()   # before TF-Agents resolves tf.keras

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tf_agents.trajectories import time_step as ts  # noqa: E402

from tools import policy_zoo  # noqa: E402

STEPS = 16
POLICIES = {
    "q_mlp": lambda: policy_zoo.q_mlp_policy(seed=5),
    "lstm_actor": lambda: policy_zoo.lstm_actor_policy(greedy=True, seed=5),
}


def _sample(spec, rng):
  return tf.nest.map_structure(
      lambda s: rng.normal(size=(STEPS,) + tuple(s.shape)).astype(s.dtype.as_numpy_dtype), spec)


def _actions(policy, observations) -> np.ndarray:
  """Actions of `policy` stepping through `observations` one at a time (state carried)."""
  state = policy.get_initial_state(1)
  actions = []
  for i in range(STEPS):
    obs = tf.nest.map_structure(lambda o: tf.constant(o[i:i + 1]), observations)
    step = ts.restart(obs, batch_size=1) if i == 0 else ts.transition(
        obs, tf.zeros([1]), tf.ones([1]))
    out = policy.action(step, state)
    state = out.state
    actions.append(out.action.numpy()[0])
  return np.stack(actions)


def write(name: str, out_dir: str) -> None:
  policy = POLICIES[name]()
  rng = np.random.default_rng(0)
  observations = _sample(policy.time_step_spec.observation, rng)
  root = os.path.join(out_dir, name)
  shutil.rmtree(root, ignore_errors=True)
  path = os.path.join(root, "export")
  saver = policy_zoo.save(policy, path, train_step=21, metadata={
      "env_name": tf.Variable("cross-version"), "tf_version": tf.Variable(tf.__version__)})
  actions = _actions(policy, observations)
  for v in policy.variables():
    v.assign(-v)
  saver.save_checkpoint(os.path.join(root, "checkpoint"))
  checkpoint_actions = _actions(policy, observations)
  flat_obs = {f"obs/{i}": o for i, o in enumerate(tf.nest.flatten(observations))}
  np.savez(os.path.join(root, "reference.npz"), actions=actions,
           checkpoint_actions=checkpoint_actions, tf_version=tf.__version__, **flat_obs)
  print(f"{root}: TF {tf.__version__}, {STEPS} steps")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("out_dir")
  args = parser.parse_args(argv)
  os.makedirs(args.out_dir, exist_ok=True)
  for name in POLICIES:
    write(name, args.out_dir)
  return 0


if __name__ == "__main__":
  sys.exit(main())
