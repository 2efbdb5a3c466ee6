"""Small real TF-Agents policies, saved with `PolicySaver`, for tests and benchmarks.

Each builder returns a `tf_policy.TFPolicy` with deterministic initial weights
(seeded), so two builds with the same arguments act identically. `save()`
exports one with `PolicySaver` exactly as a training job would.
"""

from __future__ import annotations

import os
from typing import Optional

import tensorflow as tf
from tf_agents.agents.ppo import ppo_policy
from tf_agents.networks import actor_distribution_network
from tf_agents.networks import actor_distribution_rnn_network
from tf_agents.networks import q_network
from tf_agents.networks import value_network
from tf_agents.policies import actor_policy
from tf_agents.policies import greedy_policy
from tf_agents.policies import policy_saver
from tf_agents.policies import q_policy
from tf_agents.policies import random_tf_policy
from tf_agents.specs import tensor_spec
from tf_agents.trajectories import time_step as ts


def observation_spec(num_leaves: int, leaf_dim: int = 4):
  """One float vector, or a dict of `num_leaves` vectors named obs_00, obs_01, ..."""
  if num_leaves == 1:
    return tf.TensorSpec([leaf_dim], tf.float32, "observation")
  return {f"obs_{i:02d}": tf.TensorSpec([leaf_dim], tf.float32, f"obs_{i:02d}")
          for i in range(num_leaves)}


def _preprocessing(obs_spec, width: int = 8):
  if not isinstance(obs_spec, dict):
    return None, None
  layers = {k: tf.keras.layers.Dense(width) for k in obs_spec}
  return layers, tf.keras.layers.Concatenate(axis=-1)


def q_mlp_policy(num_leaves: int = 1, num_actions: int = 2, fc=(64, 64), seed: int = 0,
                 leaf_dim: int = 4):
  """A greedy Q policy over an MLP; dict observations, concatenated, when `num_leaves` > 1."""
  tf.random.set_seed(seed)
  obs_spec = observation_spec(num_leaves, leaf_dim)
  action_spec = tensor_spec.BoundedTensorSpec((), tf.int64, 0, num_actions - 1, "action")
  layers = None
  combiner = None
  if num_leaves > 1:
    combiner = tf.keras.layers.Lambda(lambda obs: tf.concat(tf.nest.flatten(obs), axis=-1))
  net = q_network.QNetwork(obs_spec, action_spec, preprocessing_layers=layers,
                           preprocessing_combiner=combiner, fc_layer_params=fc)
  net.create_variables()
  # QPolicy samples from Categorical(logits=Q); the greedy wrapper takes argmax.
  return greedy_policy.GreedyPolicy(
      q_policy.QPolicy(ts.time_step_spec(obs_spec), action_spec, q_network=net))


def _lstm_observation_spec():
  return {
      "position": tf.TensorSpec([3], tf.float32, "position"),
      "velocity": tf.TensorSpec([2], tf.float32, "velocity"),
  }


def lstm_actor_policy(greedy: bool = True, seed: int = 0, lstm_size=(16,)):
  """An actor policy over an LSTM with dict observations; has a policy state."""
  tf.random.set_seed(seed)
  obs_spec = _lstm_observation_spec()
  action_spec = tensor_spec.BoundedTensorSpec([2], tf.float32, -1.0, 1.0, "action")
  layers, combiner = _preprocessing(obs_spec)
  net = actor_distribution_rnn_network.ActorDistributionRnnNetwork(
      obs_spec, action_spec, preprocessing_layers=layers, preprocessing_combiner=combiner,
      input_fc_layer_params=(32,), lstm_size=lstm_size, output_fc_layer_params=(32,))
  net.create_variables()
  policy = actor_policy.ActorPolicy(ts.time_step_spec(obs_spec), action_spec, net)
  return greedy_policy.GreedyPolicy(policy) if greedy else policy


def ppo_collect_policy(seed: int = 0):
  """A stochastic PPO collect policy; its info carries distribution parameters."""
  tf.random.set_seed(seed)
  obs_spec = tf.TensorSpec([5], tf.float32, "observation")
  action_spec = tensor_spec.BoundedTensorSpec([2], tf.float32, -1.0, 1.0, "action")
  actor = actor_distribution_network.ActorDistributionNetwork(
      obs_spec, action_spec, fc_layer_params=(32,))
  value = value_network.ValueNetwork(obs_spec, fc_layer_params=(32,))
  actor.create_variables()
  value.create_variables()
  return ppo_policy.PPOPolicy(ts.time_step_spec(obs_spec), action_spec, actor, value,
                              collect=True)


def random_policy():
  """A uniform random policy over a bounded int action and a dict observation."""
  obs_spec = {"a": tf.TensorSpec([2], tf.float32, "a"), "b": tf.TensorSpec([], tf.int32, "b")}
  action_spec = tensor_spec.BoundedTensorSpec([3], tf.int32, -2, 5, "action")
  return random_tf_policy.RandomTFPolicy(ts.time_step_spec(obs_spec), action_spec)


def make_saver(policy, batch_size: Optional[int] = None, train_step: int = 0,
               metadata: Optional[dict] = None) -> policy_saver.PolicySaver:
  """A `PolicySaver` with a real train-step variable and metadata variables."""
  step = tf.Variable(train_step, dtype=tf.int64, name="train_step")
  metadata = metadata if metadata is not None else {
      "env_name": tf.Variable("test-env"), "version": tf.Variable(3, dtype=tf.int64)}
  return policy_saver.PolicySaver(policy, batch_size=batch_size, train_step=step,
                                  metadata=metadata)


def save(policy, path: str, batch_size: Optional[int] = None, train_step: int = 0,
         metadata: Optional[dict] = None) -> policy_saver.PolicySaver:
  """Exports `policy` to `path` with PolicySaver; returns the saver."""
  saver = make_saver(policy, batch_size, train_step, metadata)
  saver.save(os.fspath(path))
  return saver
