"""Writes TF 2.4-era PolicySaver exports (the legacy fixtures), with that era's own code.

Run once, in a throwaway Python 3.8 environment; the output is committed
under tests/fixtures/tf2_4, so the suite needs no Python 3.8:

    python3.8 -m venv /tmp/tf24 && /tmp/tf24/bin/pip install -r tools/legacy_exports/requirements.txt
    /tmp/tf24/bin/python tools/legacy_exports/make_tf24_exports.py tests/fixtures/tf2_4

Self-contained (imports nothing of this project): TF 2.4's TF-Agents saves
the `distribution` function's output spec as a TFP TypeSpec that TF 2.15
cannot decode (`type_spec_class` 275837168, `_TFPTypeSpec`), which is what
real exports of that era look like. For each policy it writes, under
`<out>/<name>/`: `export/` (with `policy_specs.pbtxt`), `checkpoint/` (a
`save_checkpoint` with the export's weights negated) and `reference.npz`:
sampled observations and the actions TF 2.4 takes on them, stepping through
them in order with the state carried, with the export's and the
checkpoint's weights.
"""

import os
import shutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tf_agents.networks import actor_distribution_rnn_network  # noqa: E402
from tf_agents.networks import q_network  # noqa: E402
from tf_agents.policies import actor_policy  # noqa: E402
from tf_agents.policies import greedy_policy  # noqa: E402
from tf_agents.policies import policy_saver  # noqa: E402
from tf_agents.policies import q_policy  # noqa: E402
from tf_agents.specs import tensor_spec  # noqa: E402
from tf_agents.trajectories import time_step as ts  # noqa: E402

STEPS = 16


def q_mlp():
  tf.random.set_seed(5)
  obs_spec = tf.TensorSpec([4], tf.float32, "observation")
  action_spec = tensor_spec.BoundedTensorSpec((), tf.int64, 0, 2, "action")
  net = q_network.QNetwork(obs_spec, action_spec, fc_layer_params=(64, 64))
  net.create_variables()
  return greedy_policy.GreedyPolicy(
      q_policy.QPolicy(ts.time_step_spec(obs_spec), action_spec, q_network=net))


def lstm_actor():
  tf.random.set_seed(5)
  obs_spec = {"position": tf.TensorSpec([3], tf.float32, "position"),
              "velocity": tf.TensorSpec([2], tf.float32, "velocity")}
  action_spec = tensor_spec.BoundedTensorSpec([2], tf.float32, -1.0, 1.0, "action")
  net = actor_distribution_rnn_network.ActorDistributionRnnNetwork(
      obs_spec, action_spec,
      preprocessing_layers={k: tf.keras.layers.Dense(8) for k in obs_spec},
      preprocessing_combiner=tf.keras.layers.Concatenate(axis=-1),
      input_fc_layer_params=(32,), lstm_size=(16,), output_fc_layer_params=(32,))
  net.create_variables()
  return greedy_policy.GreedyPolicy(
      actor_policy.ActorPolicy(ts.time_step_spec(obs_spec), action_spec, net))


POLICIES = {"q_mlp": q_mlp, "lstm_actor": lstm_actor}


def _actions(policy, observations):
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


def write(name, out_dir):
  policy = POLICIES[name]()
  rng = np.random.default_rng(0)
  observations = tf.nest.map_structure(
      lambda s: rng.normal(size=(STEPS,) + tuple(s.shape)).astype(s.dtype.as_numpy_dtype),
      policy.time_step_spec.observation)
  root = os.path.join(out_dir, name)
  shutil.rmtree(root, ignore_errors=True)
  train_step = tf.Variable(21, dtype=tf.int64, name="train_step")
  saver = policy_saver.PolicySaver(policy, train_step=train_step, metadata={
      "env_name": tf.Variable("legacy"), "tf_version": tf.Variable(tf.__version__)})
  saver.save(os.path.join(root, "export"))
  actions = _actions(policy, observations)
  for v in policy.variables():
    v.assign(-v)
  saver.save_checkpoint(os.path.join(root, "checkpoint"))
  checkpoint_actions = _actions(policy, observations)
  flat_obs = {"obs/%d" % i: o for i, o in enumerate(tf.nest.flatten(observations))}
  np.savez(os.path.join(root, "reference.npz"), actions=actions,
           checkpoint_actions=checkpoint_actions, tf_version=tf.__version__, **flat_obs)
  print("%s: TF %s, %d steps" % (root, tf.__version__, STEPS))


def main(argv):
  out_dir = argv[1]
  os.makedirs(out_dir, exist_ok=True)
  for name in POLICIES:
    write(name, out_dir)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
