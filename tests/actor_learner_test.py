"""TF-Agents' actor-learner loop with our policy in the actor: pushed weights reach every engine.

The learner side is TF-Agents' own: `learner.Learner` with a
`PolicySavedModelTrigger` (which exports the policies the actor loads), a
Reverb replay table fed by `ReverbAddTrajectoryObserver`, and a
`ReverbVariableContainer` on a real `reverb.Server`. The actor is
`actor.Actor` over our `SavedModelPyTFEagerPolicy`, kept current the way
TF-Agents' distributed examples do: `variables = {POLICY_KEY:
policy.variables(), TRAIN_STEP_KEY: train_step}` built once, then
`container.update(variables)` before each run.
"""

import os

import numpy as np
import pytest
import reverb
import tensorflow as tf
from tf_agents.agents.ddpg import critic_network
from tf_agents.agents.dqn import dqn_agent
from tf_agents.agents.sac import sac_agent
from tf_agents.agents.sac import tanh_normal_projection_network
from tf_agents.environments import batched_py_environment
from tf_agents.environments import random_py_environment
from tf_agents.experimental.distributed import reverb_variable_container
from tf_agents.networks import actor_distribution_network
from tf_agents.networks import q_network
from tf_agents.policies import greedy_policy
from tf_agents.policies import py_tf_eager_policy
from tf_agents.replay_buffers import reverb_replay_buffer
from tf_agents.replay_buffers import reverb_utils
from tf_agents.specs import array_spec
from tf_agents.specs import tensor_spec
from tf_agents.train import actor
from tf_agents.train import learner
from tf_agents.train import triggers
from tf_agents.train.utils import train_utils
from tf_agents.trajectories import time_step as ts

from policy_runtime.policies import SavedModelPyTFEagerPolicy
from policy_runtime.policies.engines import lite_validation

POLICY_KEY = reverb_variable_container.POLICY_KEY
TRAIN_STEP_KEY = reverb_variable_container.TRAIN_STEP_KEY
_OBSERVATION = array_spec.BoundedArraySpec((4,), np.float32, -3.0, 3.0, "observation")
_ACTIONS = {
    "dqn": array_spec.BoundedArraySpec((), np.int64, 0, 2, "action"),
    "sac": array_spec.BoundedArraySpec((2,), np.float32, -1.0, 1.0, "action"),
}


def _environment(kind: str, seed: int = 0):
  return random_py_environment.RandomPyEnvironment(
      _OBSERVATION, _ACTIONS[kind], min_duration=5, max_duration=20, seed=seed)


def _agent(kind: str, train_step):
  env = _environment(kind)
  time_step_spec = tensor_spec.from_spec(env.time_step_spec())
  action_spec = tensor_spec.from_spec(env.action_spec())
  adam = lambda: tf.keras.optimizers.Adam(1e-3)  # noqa: E731
  if kind == "dqn":
    net = q_network.QNetwork(time_step_spec.observation, action_spec, fc_layer_params=(32,))
    agent = dqn_agent.DqnAgent(time_step_spec, action_spec, q_network=net, optimizer=adam(),
                               train_step_counter=train_step)
  else:
    actor_net = actor_distribution_network.ActorDistributionNetwork(
        time_step_spec.observation, action_spec, fc_layer_params=(32,),
        continuous_projection_net=tanh_normal_projection_network.TanhNormalProjectionNetwork)
    critic = critic_network.CriticNetwork((time_step_spec.observation, action_spec),
                                          joint_fc_layer_params=(32,))
    agent = sac_agent.SacAgent(time_step_spec, action_spec, actor_network=actor_net,
                               critic_network=critic, actor_optimizer=adam(),
                               critic_optimizer=adam(), alpha_optimizer=adam(),
                               train_step_counter=train_step)
  agent.initialize()
  return agent


class _Learner:
  """One learner job: agent, Reverb server (replay + variables), Learner with its trigger."""

  def __init__(self, kind: str, root: str):
    self.kind = kind
    self.train_step = train_utils.create_train_step()
    self.agent = _agent(kind, self.train_step)
    self.variables = {POLICY_KEY: self.agent.collect_policy.variables(),
                      TRAIN_STEP_KEY: self.train_step}
    replay_signature = tensor_spec.add_outer_dim(
        tensor_spec.from_spec(self.agent.collect_data_spec))
    variable_signature = tf.nest.map_structure(lambda v: tf.TensorSpec(v.shape, v.dtype),
                                               self.variables)
    self.server = reverb.Server([
        reverb.Table("uniform_table", max_size=10_000, sampler=reverb.selectors.Uniform(),
                     remover=reverb.selectors.Fifo(),
                     rate_limiter=reverb.rate_limiters.MinSize(1), signature=replay_signature),
        reverb.Table(reverb_variable_container.DEFAULT_TABLE, max_size=1,
                     sampler=reverb.selectors.Uniform(), remover=reverb.selectors.Fifo(),
                     rate_limiter=reverb.rate_limiters.MinSize(1),
                     signature=variable_signature),
    ], port=None)
    self.address = f"localhost:{self.server.port}"
    replay = reverb_replay_buffer.ReverbReplayBuffer(
        self.agent.collect_data_spec, sequence_length=2, table_name="uniform_table",
        local_server=self.server)
    self.container = reverb_variable_container.ReverbVariableContainer(
        self.address, table_names=[reverb_variable_container.DEFAULT_TABLE])
    self.container.push(self.variables)
    self.saved_model_dir = os.path.join(root, learner.POLICY_SAVED_MODEL_DIR)
    self.learner = learner.Learner(
        root, self.train_step, self.agent,
        lambda: replay.as_dataset(sample_batch_size=16, num_steps=2).prefetch(2),
        triggers=[triggers.PolicySavedModelTrigger(self.saved_model_dir, self.agent,
                                                   self.train_step, interval=10_000)])
    self.greedy = greedy_policy.GreedyPolicy(self.agent.policy)
    # Experience from TF-Agents' own policy, so the learner can train from the start.
    self.collect(py_tf_eager_policy.PyTFEagerPolicy(self.agent.collect_policy,
                                                    use_tf_function=True), steps=64)

  def collect(self, policy, steps: int) -> None:
    observer = reverb_utils.ReverbAddTrajectoryObserver(
        reverb.Client(self.address), "uniform_table", sequence_length=2, stride_length=1)
    try:
      actor.Actor(_environment(self.kind, seed=1), policy, train_utils.create_train_step(),
                  steps_per_run=steps, observers=[observer]).run()
    finally:
      observer.close()

  def train_and_push(self) -> None:
    """A few train steps, then the last layer flipped (greedy actions move), then a push."""
    self.learner.run(iterations=2)
    for variable in self.agent.policy.variables()[-2:]:
      variable.assign(-variable)
    self.container.push(self.variables)

  def greedy_actions(self, observations: np.ndarray) -> np.ndarray:
    time_step = ts.restart(tf.constant(observations), batch_size=len(observations))
    return self.greedy.action(time_step).action.numpy().astype(np.float64)


@pytest.fixture(scope="module", params=["dqn", "sac"])
def learner_job(request, tmp_path_factory):
  job = _Learner(request.param, str(tmp_path_factory.mktemp(request.param)))
  yield job
  job.server.stop()


def _ours(job, name: str, backend: str, batch_time_steps: bool):
  return SavedModelPyTFEagerPolicy(os.path.join(job.saved_model_dir, name),
                                   load_specs_from_pbtxt=True, backend=backend,
                                   batch_time_steps=batch_time_steps)


def _greedy_actions(policy, observations: np.ndarray, batch_time_steps: bool) -> np.ndarray:
  if batch_time_steps:
    return np.stack([np.asarray(policy.action(ts.restart(o)).action, np.float64)
                     for o in observations])
  step = ts.restart(observations, batch_size=len(observations))
  return np.asarray(policy.action(step).action, np.float64)


def _agreement(got: np.ndarray, want: np.ndarray) -> float:
  close = np.isclose(got, want, rtol=lite_validation.FLOAT_RTOL, atol=lite_validation.FLOAT_ATOL)
  return float(np.mean(close.reshape(len(got), -1).all(axis=1)))


@pytest.mark.parametrize("batch_time_steps", [True, False])
@pytest.mark.parametrize("backend", ["tf", "lite", "auto"])
def test_the_actor_acts_on_every_push(learner_job, backend, batch_time_steps):
  job = learner_job
  collect = _ours(job, learner.COLLECT_POLICY_SAVED_MODEL_DIR, backend, batch_time_steps)
  greedy = _ours(job, learner.GREEDY_POLICY_SAVED_MODEL_DIR, backend, batch_time_steps)
  assert collect.backend == greedy.backend == ("tf" if backend == "tf" else "lite")
  actor_step = train_utils.create_train_step()
  collect_variables = {POLICY_KEY: collect.variables(), TRAIN_STEP_KEY: actor_step}
  greedy_variables = {POLICY_KEY: greedy.variables(), TRAIN_STEP_KEY: actor_step}
  if batch_time_steps:
    observer = reverb_utils.ReverbAddTrajectoryObserver(
        reverb.Client(job.address), "uniform_table", sequence_length=2, stride_length=1)
    runner = actor.Actor(_environment(job.kind, seed=2), collect, actor_step,
                         steps_per_run=32, observers=[observer])
  else:   # Reverb's trajectory observer takes no batches: the batched actor only acts
    observer = None
    env = batched_py_environment.BatchedPyEnvironment(
        [_environment(job.kind, seed=s) for s in (3, 4)])
    runner = actor.Actor(env, collect, actor_step, steps_per_run=32)
  observations = np.random.default_rng(0).uniform(-3, 3, (64, 4)).astype(np.float32)
  stale = []
  try:
    for _ in range(3):
      runner.run()
      job.train_and_push()
      before = _greedy_actions(greedy, observations, batch_time_steps)
      job.container.update(collect_variables)
      job.container.update(greedy_variables)
      want = job.greedy_actions(observations)
      got = _greedy_actions(greedy, observations, batch_time_steps)
      stale.append(_agreement(before, want))
      if greedy.backend == "tf" or job.kind == "dqn":
        np.testing.assert_array_equal(got, want)   # exact; integer actions on every engine
      else:
        np.testing.assert_allclose(got, want, rtol=lite_validation.FLOAT_RTOL,
                                   atol=lite_validation.FLOAT_ATOL)
      assert int(actor_step.numpy()) == int(job.train_step.numpy())
      for ours, theirs in zip(collect.variables(), job.agent.collect_policy.variables()):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
  finally:
    if observer is not None:
      observer.close()
  # Without following the pushes the actor would have acted on old weights.
  assert min(stale) < 0.9, stale
  assert collect.backend == greedy.backend == ("tf" if backend == "tf" else "lite")


def test_the_collect_policy_samples_from_the_pushed_weights(learner_job):
  """DQN's epsilon-greedy / SAC's actor sample: their means follow the learner's, on LiteRT."""
  job = learner_job
  collect = _ours(job, learner.COLLECT_POLICY_SAVED_MODEL_DIR, "lite", False)
  job.train_and_push()
  job.container.update({POLICY_KEY: collect.variables(),
                        TRAIN_STEP_KEY: train_utils.create_train_step()})
  observation = np.random.default_rng(1).uniform(-3, 3, (1, 4)).astype(np.float32)
  many = np.repeat(observation, 4000, axis=0)
  ours = _greedy_actions(collect, many, batch_time_steps=False)
  theirs = job.agent.collect_policy.action(ts.restart(tf.constant(many), batch_size=4000))
  theirs = theirs.action.numpy().astype(np.float64)
  if job.kind == "dqn":   # the same action frequencies (epsilon 0.1 over 3 actions)
    for action in range(3):
      assert abs(np.mean(ours == action) - np.mean(theirs == action)) < 0.05
  else:
    np.testing.assert_allclose(ours.mean(axis=0), theirs.mean(axis=0), atol=0.05)
