"""Small real TF-Agents policies, saved with `PolicySaver`, for tests and benchmarks.

Each builder returns a `tf_policy.TFPolicy` with deterministic initial weights
(seeded), so two builds with the same arguments act identically. `save()`
exports one with `PolicySaver` exactly as a training job would.
"""

from __future__ import annotations

import functools
import os
from typing import Optional

from tools import tf_agents_keras

tf_agents_keras.select_keras_2()   # before TF-Agents resolves tf.keras

import numpy as np  # noqa: E402  pylint: disable=wrong-import-position
import tensorflow as tf  # noqa: E402  pylint: disable=wrong-import-position
from tf_agents.agents.ppo import ppo_policy
from tf_agents.networks import actor_distribution_network
from tf_agents.networks import actor_distribution_rnn_network
from tf_agents.networks import categorical_projection_network
from tf_agents.networks import network
from tf_agents.networks import q_network
from tf_agents.networks import value_network
from tf_agents.networks import value_rnn_network
from tf_agents.policies import actor_policy
from tf_agents.policies import greedy_policy
from tf_agents.policies import policy_saver
from tf_agents.policies import q_policy
from tf_agents.policies import random_tf_policy
from tf_agents.policies import tf_policy
from tf_agents.specs import tensor_spec
from tf_agents.trajectories import policy_step
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


def q_sampling_policy(seed: int = 0, num_actions: int = 4, obs_dim: int = 8,
                      first_action_shift: float = 0.0):
  """A plain `QPolicy`: samples its action from softmax(Q) (a 2x64 MLP Q network).

  `first_action_shift` is added to the first action's Q (its logit) before sampling.
  """
  tf.random.set_seed(seed)
  obs_spec = tf.TensorSpec([obs_dim], tf.float32, "observation")
  action_spec = tensor_spec.BoundedTensorSpec((), tf.int64, 0, num_actions - 1, "action")
  net = q_network.QNetwork(obs_spec, action_spec, fc_layer_params=(64, 64))
  net.create_variables()
  if first_action_shift:
    bias = net.layers[-1].bias
    bias.assign(bias + tf.one_hot(0, num_actions) * first_action_shift)
  return q_policy.QPolicy(ts.time_step_spec(obs_spec), action_spec, q_network=net)


def epsilon_greedy_policy(epsilon: float = 0.3, seed: int = 0):
  """Epsilon-greedy exploration over a greedy Q policy (a random action with probability epsilon)."""
  from tf_agents.policies import epsilon_greedy_policy as eg  # pylint: disable=import-outside-toplevel
  greedy = q_mlp_policy(num_actions=4, seed=seed, leaf_dim=8)
  return eg.EpsilonGreedyPolicy(greedy.wrapped_policy, epsilon)


class _CategoricalProjection(categorical_projection_network.CategoricalProjectionNetwork):
  """TF-Agents' categorical projection; its own constructor calls int() on a 1-element
  array, which numpy 2 refuses, so the same construction is spelled out here."""

  def __init__(self, sample_spec, logits_init_output_factor=0.1,  # pylint: disable=super-init-not-called
               name="CategoricalProjectionNetwork"):
    num_actions = int(np.unique(sample_spec.maximum - sample_spec.minimum + 1)[0])
    output_shape = sample_spec.shape.concatenate([num_actions])
    network.DistributionNetwork.__init__(  # pylint: disable=non-parent-init-called
        self, input_tensor_spec=None, state_spec=(),
        output_spec=self._output_distribution_spec(output_shape, sample_spec, name), name=name)
    self._sample_spec = sample_spec
    self._output_shape = output_shape
    self._projection_layer = tf.keras.layers.Dense(
        output_shape.num_elements(),
        kernel_initializer=tf.compat.v1.keras.initializers.VarianceScaling(
            scale=logits_init_output_factor),
        bias_initializer=tf.keras.initializers.Zeros(), name="logits")


def ppo_categorical_collect_policy(seed: int = 0):
  """A PPO collect policy over a discrete action: samples from a categorical distribution."""
  tf.random.set_seed(seed)
  obs_spec = tf.TensorSpec([5], tf.float32, "observation")
  action_spec = tensor_spec.BoundedTensorSpec((), tf.int64, 0, 3, "action")
  actor = actor_distribution_network.ActorDistributionNetwork(
      obs_spec, action_spec, fc_layer_params=(32,), discrete_projection_net=_CategoricalProjection)
  value = value_network.ValueNetwork(obs_spec, fc_layer_params=(32,))
  actor.create_variables()
  value.create_variables()
  return ppo_policy.PPOPolicy(ts.time_step_spec(obs_spec), action_spec, actor, value,
                              collect=True)


def gaussian_actor_policy(seed: int = 0, fc=(16,)):
  """A stochastic actor over an MLP: samples a continuous action from a normal; no info."""
  tf.random.set_seed(seed)
  obs_spec = tf.TensorSpec([3], tf.float32, "observation")
  action_spec = tensor_spec.BoundedTensorSpec([2], tf.float32, -1.0, 1.0, "action")
  net = actor_distribution_network.ActorDistributionNetwork(obs_spec, action_spec,
                                                            fc_layer_params=fc)
  net.create_variables()
  return actor_policy.ActorPolicy(ts.time_step_spec(obs_spec), action_spec, net)


def atari_q_policy(seed: int = 0, num_actions: int = 6):
  """Greedy DQN over Atari frames: the Nature DQN's conv net on uint8 [84, 84, 4] in [0, 255].

  As TF-Agents' Atari examples build it: the frames scaled to [0, 1] in the
  network, then 3 conv layers and a 512-unit dense layer (1.7M weights).
  """
  tf.random.set_seed(seed)
  obs_spec = tensor_spec.BoundedTensorSpec([84, 84, 4], tf.uint8, 0, 255, "observation")
  action_spec = tensor_spec.BoundedTensorSpec((), tf.int64, 0, num_actions - 1, "action")
  scale = tf.keras.layers.Lambda(lambda frames: tf.cast(frames, tf.float32) / 255.0)
  # The network's own spec only seeds create_variables(), whose sampler computes
  # maximum + 1 in uint8 under numpy 2 (0: TF-Agents 0.19 then fails); 254 avoids it.
  network_spec = tensor_spec.BoundedTensorSpec([84, 84, 4], tf.uint8, 0, 254, "observation")
  net = q_network.QNetwork(network_spec, action_spec, preprocessing_layers=scale,
                           conv_layer_params=((32, (8, 8), 4), (64, (4, 4), 2),
                                              (64, (3, 3), 1)),
                           fc_layer_params=(512,))
  net.create_variables()
  return greedy_policy.GreedyPolicy(
      q_policy.QPolicy(ts.time_step_spec(obs_spec), action_spec, q_network=net))


def sac_actor_policy(greedy: bool = True, seed: int = 0, fc=(256, 256), obs_dim: int = 17,
                     action_dim: int = 6):
  """SAC's actor as TF-Agents' MuJoCo examples build it (tanh-normal head, 256x256):
  its greedy policy (the squashed mean), or the sampling one."""
  from tf_agents.agents.sac import tanh_normal_projection_network  # pylint: disable=import-outside-toplevel
  tf.random.set_seed(seed)
  obs_spec = tf.TensorSpec([obs_dim], tf.float32, "observation")
  action_spec = tensor_spec.BoundedTensorSpec([action_dim], tf.float32, -1.0, 1.0, "action")
  net = actor_distribution_network.ActorDistributionNetwork(
      obs_spec, action_spec, fc_layer_params=fc,
      continuous_projection_net=tanh_normal_projection_network.TanhNormalProjectionNetwork)
  net.create_variables()
  policy = actor_policy.ActorPolicy(ts.time_step_spec(obs_spec), action_spec, net,
                                    training=False)
  return greedy_policy.GreedyPolicy(policy) if greedy else policy


def _continuous_agent_specs():
  obs_spec = tf.TensorSpec([5], tf.float32, "observation")
  action_spec = tensor_spec.BoundedTensorSpec([2], tf.float32, -1.0, 1.0, "action")
  return obs_spec, action_spec, ts.time_step_spec(obs_spec)


def _actor_critic_policy(agent_class, seed: int, which: str, **options):
  """`which` policy of a DDPG-style agent (`Td3Agent`, `DdpgAgent`) on 16-unit networks."""
  from tf_agents.agents.ddpg import actor_network, critic_network  # pylint: disable=import-outside-toplevel
  tf.random.set_seed(seed)
  obs_spec, action_spec, time_step_spec = _continuous_agent_specs()
  agent = agent_class(
      time_step_spec, action_spec,
      actor_network=actor_network.ActorNetwork(obs_spec, action_spec, fc_layer_params=(16,)),
      critic_network=critic_network.CriticNetwork((obs_spec, action_spec),
                                                  joint_fc_layer_params=(16,)),
      actor_optimizer=tf.keras.optimizers.Adam(), critic_optimizer=tf.keras.optimizers.Adam(),
      **options)
  agent.initialize()
  return getattr(agent, which)


def td3_collect_policy(noise_std: float = 0.1, seed: int = 0, which: str = "collect_policy"):
  """TD3's collect policy, from TF-Agents' `Td3Agent`: Gaussian exploration noise, drawn once
  per call and shared across the batch (`which="policy"`: the deterministic actor)."""
  from tf_agents.agents.td3 import td3_agent  # pylint: disable=import-outside-toplevel
  return _actor_critic_policy(td3_agent.Td3Agent, seed, which, exploration_noise_std=noise_std)


def ddpg_collect_policy(ou_damping: float = 0.15, seed: int = 0, which: str = "collect_policy"):
  """DDPG's collect policy, from TF-Agents' `DdpgAgent`: Ornstein-Uhlenbeck noise kept in
  variables (assigned and read back each call), shared across the batch (`which="policy"`:
  the deterministic actor)."""
  from tf_agents.agents.ddpg import ddpg_agent  # pylint: disable=import-outside-toplevel
  return _actor_critic_policy(ddpg_agent.DdpgAgent, seed, which, ou_damping=ou_damping)


def ppo_clip_collect_policy(seed: int = 0, scale: float = 1.0):
  """PPO-clip's collect policy, from TF-Agents' `PPOClipAgent`, which builds it with
  clip=False: its Gaussian samples leave the action bounds, in TF too. `scale` multiplies
  the actor's weights (a wrong model, for tests)."""
  from tf_agents.agents.ppo import ppo_clip_agent  # pylint: disable=import-outside-toplevel
  tf.random.set_seed(seed)
  obs_spec, action_spec, time_step_spec = _continuous_agent_specs()
  actor = actor_distribution_network.ActorDistributionNetwork(obs_spec, action_spec,
                                                              fc_layer_params=(16,))
  agent = ppo_clip_agent.PPOClipAgent(
      time_step_spec, action_spec, optimizer=tf.keras.optimizers.Adam(), actor_net=actor,
      value_net=value_network.ValueNetwork(obs_spec, fc_layer_params=(16,)))
  agent.initialize()
  for variable in actor.variables:
    variable.assign(variable * scale)
  return agent.collect_policy


def bandit_epsilon_greedy_policy(epsilon: float = 0.1, reward_shift: float = 0.0,
                                 seed: int = 0):
  """A `NeuralEpsilonGreedyAgent`'s collect policy emitting its predicted rewards: greedy
  predictions in most rows, random values in exploring ones. `reward_shift` is added to the
  reward network's last bias (a wrong model, for tests)."""
  from tf_agents.bandits.agents import neural_epsilon_greedy_agent  # pylint: disable=import-outside-toplevel
  from tf_agents.bandits.policies import policy_utilities  # pylint: disable=import-outside-toplevel
  tf.random.set_seed(seed)
  obs_spec, _, time_step_spec = _continuous_agent_specs()
  action_spec = tensor_spec.BoundedTensorSpec((), tf.int32, 0, 3, "action")
  net = q_network.QNetwork(obs_spec, action_spec, fc_layer_params=(16,))
  agent = neural_epsilon_greedy_agent.NeuralEpsilonGreedyAgent(
      time_step_spec, action_spec, reward_network=net, optimizer=tf.keras.optimizers.Adam(),
      epsilon=epsilon,
      emit_policy_info=(policy_utilities.InfoFields.PREDICTED_REWARDS_MEAN,))
  agent.initialize()
  net.layers[-1].bias.assign_add(tf.fill(net.layers[-1].bias.shape, reward_shift))
  return agent.collect_policy


def masked_dqn_agent(ignore_mask: bool = False):
  """A `DqnAgent` whose observations carry an action mask
  (`observation_and_action_constraint_splitter`); `ignore_mask`: its splitter hands on an
  all-ones mask instead (a wrong model, for tests)."""
  from tf_agents.agents.dqn import dqn_agent  # pylint: disable=import-outside-toplevel
  obs_spec, _, _ = _continuous_agent_specs()
  discrete = tensor_spec.BoundedTensorSpec((), tf.int64, 0, 2, "action")
  masked = {"observation": obs_spec, "mask": tf.TensorSpec([3], tf.int32, "mask")}

  def splitter(observation):   # also called on the observation spec
    mask = observation["mask"]
    if ignore_mask and not isinstance(mask, tf.TensorSpec):
      mask = tf.ones_like(mask)
    return observation["observation"], mask

  net = q_network.QNetwork(obs_spec, discrete, fc_layer_params=(16,))
  return dqn_agent.DqnAgent(ts.time_step_spec(masked), discrete, q_network=net,
                            optimizer=tf.keras.optimizers.Adam(),
                            observation_and_action_constraint_splitter=splitter)


def masked_dqn_policy(ignore_mask: bool = False, seed: int = 0):
  """The greedy policy of `masked_dqn_agent`."""
  tf.random.set_seed(seed)
  agent = masked_dqn_agent(ignore_mask)
  agent.initialize()
  return agent.policy


def agent_family_policies():
  """Builders of every TF-Agents agent family's exported policies, by "<family>/<which>".

  Each agent is TF-Agents' own class with its default exploration, on small
  networks (seeded): its `policy` and `collect_policy`, and its greedy policy
  where `policy` samples (as `PolicySavedModelTrigger` exports them).
  """
  # pylint: disable=import-outside-toplevel
  from tf_agents.agents.behavioral_cloning import behavioral_cloning_agent
  from tf_agents.agents.categorical_dqn import categorical_dqn_agent
  from tf_agents.agents.dqn import dqn_agent
  from tf_agents.agents.ppo import ppo_agent
  from tf_agents.agents.reinforce import reinforce_agent
  from tf_agents.agents.sac import sac_agent
  from tf_agents.agents.sac import tanh_normal_projection_network
  from tf_agents.agents.ddpg import critic_network
  from tf_agents.bandits.agents import lin_ucb_agent
  from tf_agents.bandits.agents import linear_thompson_sampling_agent
  from tf_agents.bandits.networks import global_and_arm_feature_network
  from tf_agents.bandits.specs import utils as bandit_spec_utils
  from tf_agents.networks import categorical_q_network
  from tf_agents.networks import sequential
  # pylint: enable=import-outside-toplevel

  obs_spec, continuous, time_step_spec = _continuous_agent_specs()
  discrete = tensor_spec.BoundedTensorSpec((), tf.int64, 0, 2, "action")
  adam = tf.keras.optimizers.Adam

  def q_net():
    return q_network.QNetwork(obs_spec, discrete, fc_layer_params=(16,))

  def dqn(cls=dqn_agent.DqnAgent):
    return cls(time_step_spec, discrete, q_network=q_net(), optimizer=adam())

  def c51():
    net = categorical_q_network.CategoricalQNetwork(obs_spec, discrete, fc_layer_params=(16,))
    return categorical_dqn_agent.CategoricalDqnAgent(time_step_spec, discrete,
                                                     categorical_q_network=net,
                                                     optimizer=adam())

  def sac():
    actor = actor_distribution_network.ActorDistributionNetwork(
        obs_spec, continuous, fc_layer_params=(16,),
        continuous_projection_net=tanh_normal_projection_network.TanhNormalProjectionNetwork)
    critic = critic_network.CriticNetwork((obs_spec, continuous), joint_fc_layer_params=(16,))
    return sac_agent.SacAgent(time_step_spec, continuous, actor_network=actor,
                              critic_network=critic, actor_optimizer=adam(),
                              critic_optimizer=adam(), alpha_optimizer=adam())

  def ppo(rnn=False, action_spec=continuous):
    if rnn:
      actor = actor_distribution_rnn_network.ActorDistributionRnnNetwork(
          obs_spec, action_spec, input_fc_layer_params=(8,), lstm_size=(8,),
          output_fc_layer_params=(8,))
      value = value_rnn_network.ValueRnnNetwork(obs_spec, input_fc_layer_params=(8,),
                                                lstm_size=(8,), output_fc_layer_params=(8,))
    else:
      actor = actor_distribution_network.ActorDistributionNetwork(
          obs_spec, action_spec, fc_layer_params=(16,),
          discrete_projection_net=_CategoricalProjection)
      value = value_network.ValueNetwork(obs_spec, fc_layer_params=(16,))
    return ppo_agent.PPOAgent(time_step_spec, action_spec, optimizer=adam(), actor_net=actor,
                              value_net=value)

  def reinforce():
    actor = actor_distribution_network.ActorDistributionNetwork(
        obs_spec, discrete, fc_layer_params=(16,), discrete_projection_net=_CategoricalProjection)
    return reinforce_agent.ReinforceAgent(time_step_spec, discrete, actor_network=actor,
                                          optimizer=adam())

  def behavioral_cloning():
    net = sequential.Sequential([tf.keras.layers.Dense(16, activation="relu"),
                                 tf.keras.layers.Dense(3)])
    return behavioral_cloning_agent.BehavioralCloningAgent(
        time_step_spec, discrete, cloning_network=net, optimizer=adam())

  arms = tensor_spec.BoundedTensorSpec((), tf.int32, 0, 3, "action")

  def linear(cls):
    return cls(time_step_spec, arms, emit_policy_info=("predicted_rewards_mean",))

  def per_arm(cls):
    spec = bandit_spec_utils.create_per_arm_observation_spec(4, 3, 4)
    return cls(ts.time_step_spec(spec), arms, accepts_per_arm_features=True)

  agents = {
      "dqn": dqn, "double_dqn": lambda: dqn(dqn_agent.DdqnAgent), "c51": c51,
      "dqn_action_mask": masked_dqn_agent, "sac": sac, "ppo": ppo,
      "ppo_rnn": lambda: ppo(rnn=True), "ppo_categorical": lambda: ppo(action_spec=discrete),
      "reinforce": reinforce, "behavioral_cloning": behavioral_cloning,
      "lin_ucb": lambda: linear(lin_ucb_agent.LinearUCBAgent),
      "lin_thompson": lambda: linear(linear_thompson_sampling_agent.LinearThompsonSamplingAgent),
      "lin_ucb_per_arm": lambda: per_arm(lin_ucb_agent.LinearUCBAgent),
      "neural_epsilon_greedy": bandit_epsilon_greedy_policy,
      "td3": td3_collect_policy, "ddpg": ddpg_collect_policy,
      "ppo_clip": ppo_clip_collect_policy,
  }
  del global_and_arm_feature_network

  def policies_of(build):
    def which(name):
      def make():
        tf.random.set_seed(0)
        agent = build()
        if not hasattr(agent, "collect_policy"):   # a builder that returns a policy
          return agent
        agent.initialize()
        if name == "policy":
          return agent.policy
        if name == "collect_policy":
          return agent.collect_policy
        return greedy_policy.GreedyPolicy(agent.policy)
      return make
    return which

  found = {}
  for family, build in agents.items():
    which = policies_of(build)
    if family in ("neural_epsilon_greedy", "ppo_clip"):
      found[f"{family}/collect_policy"] = build
      continue
    if family in ("td3", "ddpg"):
      for name in ("policy", "collect_policy"):
        found[f"{family}/{name}"] = functools.partial(build, which=name)
      continue
    for name in ("policy", "collect_policy"):
      found[f"{family}/{name}"] = which(name)
    if family in ("sac", "ppo", "ppo_rnn", "ppo_categorical", "reinforce"):
      found[f"{family}/greedy_policy"] = which("greedy_policy")
  return found


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


class BiasInfoPolicy(tf_policy.TFPolicy):
  """A deterministic policy whose info is one of its weights, forwarded as is.

  `info["bias"]` is `tf.expand_dims(self.bias, 0)` at batch 1 (tiled for larger
  batches): TF hands back the variable's own buffer, which is what a caller
  must never be able to write through.
  """

  def __init__(self):
    obs_spec = tf.TensorSpec([3], tf.float32, "observation")
    action_spec = tensor_spec.BoundedTensorSpec((), tf.int64, 0, 2, "action")
    self.bias = tf.Variable([10.0, 20.0, 30.0], name="bias")
    super().__init__(ts.time_step_spec(obs_spec), action_spec,
                     info_spec={"bias": tf.TensorSpec([3], tf.float32, "bias")})

  def _variables(self):
    return [self.bias]

  def _action(self, time_step, policy_state, seed):
    obs = time_step.observation
    action = tf.argmax(obs * self.bias, axis=-1)
    bias = tf.expand_dims(self.bias, 0)
    batch = tf.shape(obs)[0]
    bias = tf.cond(tf.equal(batch, 1), lambda: bias, lambda: tf.tile(bias, [batch, 1]))
    return policy_step.PolicyStep(action, policy_state, {"bias": bias})

  def _distribution(self, time_step, policy_state):
    raise NotImplementedError("BiasInfoPolicy has no distribution")


class _ObservationArgmaxPolicy(tf_policy.TFPolicy):
  """argmax of `_transform(observation)` over a float[3] observation; no variables."""

  def __init__(self):
    obs_spec = tf.TensorSpec([3], tf.float32, "observation")
    action_spec = tensor_spec.BoundedTensorSpec((), tf.int64, 0, 2, "action")
    super().__init__(ts.time_step_spec(obs_spec), action_spec)

  def _transform(self, observation):
    raise NotImplementedError

  def _variables(self):
    return []

  def _action(self, time_step, policy_state, seed):
    action = tf.argmax(self._transform(time_step.observation), axis=-1)
    return policy_step.PolicyStep(action, policy_state, ())

  def _distribution(self, time_step, policy_state):
    raise NotImplementedError(f"{type(self).__name__} has no distribution")


class NumericsCheckedPolicy(_ObservationArgmaxPolicy):
  """argmax of the observation, which the graph checks for NaN and Inf.

  A call with a NaN in any row fails inside TF (InvalidArgumentError), after
  the input passed every spec check: a real failure of a batched call.
  """

  def _transform(self, observation):
    return tf.debugging.check_numerics(observation, "observation has NaN or Inf")


class CumprodPolicy(_ObservationArgmaxPolicy):
  """argmax of cumprod(observation): Cumprod has no LiteRT builtin, so it stays on TF."""

  def _transform(self, observation):
    return tf.math.cumprod(observation, axis=-1)


class SoftplusWeightsPolicy(_ObservationArgmaxPolicy):
  """argmax of observation @ softplus(W): LiteRT's converter folds softplus(W) into one
  constant, which new weights cannot be written into (they need a conversion)."""

  def __init__(self, seed: int = 0, checked: bool = False):
    """`checked`: the scores go through `check_numerics`, so TF refuses non-finite weights."""
    super().__init__()
    self._checked = checked
    self._weights = tf.Variable(
        tf.random.stateless_normal([3, 3], seed=[seed, 0]), name="weights")

  def _variables(self):
    return [self._weights]

  def _transform(self, observation):
    scores = tf.matmul(observation, tf.nn.softplus(self._weights))
    return tf.debugging.check_numerics(scores, "scores") if self._checked else scores


# The benchmarks' policies, by the name their tables use.
BENCHMARK_POLICIES = {
    "mlp_q_1leaf": lambda: q_mlp_policy(num_leaves=1),
    "q_8leaves": lambda: q_mlp_policy(num_leaves=8),
    "q_32leaves": lambda: q_mlp_policy(num_leaves=32),
    "lstm_actor_dict": lambda: lstm_actor_policy(greedy=True),
    "ppo_collect_info": ppo_collect_policy,
    "sac_actor_256": sac_actor_policy,
    "atari_conv_q": atari_q_policy,
}
# Batch sizes other than the benchmark's --batches, by policy.
BENCHMARK_BATCHES = {"sac_actor_256": (1, 32, 256), "atari_conv_q": (1, 32, 256)}


def published_kinds():
  """Builders of the policies TF-Agents' agents publish, beyond the fixtures above.

  SAC (tanh-normal actor), C51 (categorical Q, collect), DQN over an LSTM with
  epsilon-greedy exploration, DDPG with OU noise, and a Boltzmann Q policy.
  """
  from tf_agents.agents.ddpg import actor_network as ddpg_actor_network
  from tf_agents.agents.sac import tanh_normal_projection_network
  from tf_agents.networks import categorical_q_network
  from tf_agents.networks import q_rnn_network
  from tf_agents.policies import boltzmann_policy
  from tf_agents.policies import categorical_q_policy
  from tf_agents.policies import epsilon_greedy_policy
  from tf_agents.policies import ou_noise_policy

  obs = tf.TensorSpec([5], tf.float32, "observation")
  continuous = tensor_spec.BoundedTensorSpec([2], tf.float32, -1.0, 1.0, "action")
  discrete = tensor_spec.BoundedTensorSpec((), tf.int64, 0, 3, "action")
  time_steps = ts.time_step_spec(obs)

  def sac():
    net = actor_distribution_network.ActorDistributionNetwork(
        obs, continuous, fc_layer_params=(16,),
        continuous_projection_net=tanh_normal_projection_network.TanhNormalProjectionNetwork)
    net.create_variables()
    return actor_policy.ActorPolicy(time_steps, continuous, net, training=False)

  def c51():
    net = categorical_q_network.CategoricalQNetwork(obs, discrete, fc_layer_params=(16,))
    net.create_variables()
    return epsilon_greedy_policy.EpsilonGreedyPolicy(
        categorical_q_policy.CategoricalQPolicy(time_steps, discrete, net,
                                                min_q_value=-10.0, max_q_value=10.0), 0.1)

  def q_rnn_epsilon_greedy():
    net = q_rnn_network.QRnnNetwork(obs, discrete, lstm_size=(8,))
    net.create_variables()
    return epsilon_greedy_policy.EpsilonGreedyPolicy(
        q_policy.QPolicy(time_steps, discrete, net), 0.1)

  def ddpg_ou():
    net = ddpg_actor_network.ActorNetwork(obs, continuous, fc_layer_params=(16,))
    net.create_variables()
    return ou_noise_policy.OUNoisePolicy(actor_policy.ActorPolicy(time_steps, continuous, net))

  def boltzmann():
    net = q_network.QNetwork(obs, discrete, fc_layer_params=(16,))
    net.create_variables()
    return boltzmann_policy.BoltzmannPolicy(q_policy.QPolicy(time_steps, discrete, net), 0.5)

  return {"sac": sac, "c51_epsilon_greedy": c51, "q_rnn_epsilon_greedy": q_rnn_epsilon_greedy,
          "ddpg_ou_noise": ddpg_ou, "boltzmann": boltzmann}
