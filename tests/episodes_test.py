"""The episode loop: Gymnasium by default, gym 0.23 with the `gym:` prefix."""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from policy_runtime.policies import SavedModelPyTFEagerPolicy
from policy_runtime.policies import episodes
from tools.cli import policy_cli

REPO = os.path.dirname(os.path.dirname(policy_cli.__file__))


@pytest.fixture(scope="module")
def default_policy():
  return SavedModelPyTFEagerPolicy(policy_cli.DEFAULT_POLICY, load_specs_from_pbtxt=True)


def _trajectory(env, policy, seed: int, actions=None) -> list:
  """Every time step of one episode, driven by `policy` or by a fixed action sequence."""
  step = env.reset(seed)
  steps = [step]
  k = 0
  while not step.is_last():
    action = policy.action(step).action if actions is None else np.int64(actions[k % 2])
    step = env.step(action)
    steps.append(step)
    k += 1
  return steps


def _assert_same_steps(a: list, b: list):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    for field in ("step_type", "reward", "discount", "observation"):
      np.testing.assert_array_equal(getattr(x, field), getattr(y, field), err_msg=field)
      assert np.asarray(getattr(x, field)).dtype == np.asarray(getattr(y, field)).dtype


@pytest.mark.parametrize("seed, at_time_limit", [(0, True), (2, True), (7, False)])
def test_gymnasium_and_gym_step_the_same_cartpole(default_policy, seed, at_time_limit):
  """The same steps, but for the time limit: TF-Agents' suite_gym calls it a termination."""
  gymnasium_env = episodes.load_env("CartPole-v1")
  gym_env = episodes.load_env("gym:CartPole-v1")
  ours = _trajectory(gymnasium_env, default_policy, seed)
  theirs = _trajectory(gym_env, default_policy, seed)
  assert (len(ours) == 501) == at_time_limit
  if at_time_limit:
    _assert_same_steps(ours[:-1], theirs[:-1])
    assert ours[-1].is_last() and theirs[-1].is_last()
    np.testing.assert_array_equal(ours[-1].observation, theirs[-1].observation)
    assert float(ours[-1].discount) == 1.0     # truncated: the last state's value counts
    assert float(theirs[-1].discount) == 0.0   # gym 0.23's done=True, taken as termination
  else:
    _assert_same_steps(ours, theirs)
  _assert_same_steps(_trajectory(gymnasium_env, None, seed, actions=(1, 1)),
                     _trajectory(gym_env, None, seed, actions=(1, 1)))


def test_time_limit_is_a_truncation_and_falling_is_a_termination(default_policy):
  env = episodes.load_env("CartPole-v0")
  solved = _trajectory(env, default_policy, seed=0)
  assert len(solved) == 201 and solved[-1].is_last() and float(solved[-1].discount) == 1.0
  fallen = _trajectory(env, None, seed=0, actions=(1, 1))
  assert len(fallen) < 50 and fallen[-1].is_last() and float(fallen[-1].discount) == 0.0
  assert all(float(s.discount) == 1.0 for s in fallen[:-1])
  assert fallen[0].step_type.dtype == np.int32 and fallen[0].observation.dtype == np.float32


def test_same_seed_same_episode_and_the_default_env_is_gymnasiums_v0(default_policy):
  env = episodes.load_env(episodes.env_id_for(default_policy))
  assert episodes.env_id_for(default_policy) == "CartPole-v0"
  assert isinstance(env, episodes.GymnasiumEnvironment)
  first = episodes.run_episode(env, default_policy, seed=3)
  again = episodes.run_episode(env, default_policy, seed=3)
  assert (first.total_return, first.length) == (again.total_return, again.length) == (200.0, 200)


def test_the_default_env_loads_without_gymnasiums_out_of_date_warning():
  """The library keeps CartPole-v0 on purpose (its 200-step limit); users see no nag for it."""
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    episodes.load_env(episodes.DEFAULT_ENV)
  assert not [w for w in caught if "out of date" in str(w.message)]


def test_unknown_ids_are_value_errors_naming_the_package():
  with pytest.raises(ValueError, match=r"^env_id: no Gymnasium environment 'NoSuchEnv-v9'"):
    episodes.load_env("NoSuchEnv-v9")
  with pytest.raises(ValueError, match=r"^env_id: no gym environment 'NoSuchEnv-v9'"):
    episodes.load_env("gym:NoSuchEnv-v9")


@pytest.mark.parametrize("env_id", ["CartPole-v0", "gym:CartPole-v1"])
def test_cli_run_prints_no_gym_banner(env_id):
  process = subprocess.run(
      [sys.executable, "-m", "tools.cli.policy_cli", "run", "--episodes", "2", "--env", env_id],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert process.returncode == 0, process.stderr[-3000:]
  assert "average return" in process.stdout
  assert "Gym has been unmaintained" not in process.stderr
  assert "Gym has been unmaintained" not in process.stdout


@pytest.mark.parametrize("batch_size", [None, 3])
def test_time_steps_are_tf_agents_numpy_time_steps(batch_size):
  from tf_agents.trajectories import time_step as ts  # pylint: disable=import-outside-toplevel
  from policy_runtime.policies import time_steps  # pylint: disable=import-outside-toplevel
  observation = np.zeros((batch_size or 1, 4), np.float32)
  reward = np.ones(batch_size, np.float32) if batch_size else 1.0
  pairs = [(time_steps.restart(observation, batch_size=batch_size),
            ts.restart(observation, batch_size=batch_size)),
           (time_steps.transition(observation, reward), ts.transition(observation, reward)),
           (time_steps.termination(observation, reward), ts.termination(observation, reward)),
           (time_steps.truncation(observation, reward), ts.truncation(observation, reward))]
  for ours, theirs in pairs:
    for field in ("step_type", "reward", "discount"):
      expected = np.asarray(getattr(theirs, field))
      got = getattr(ours, field)
      assert got.dtype == expected.dtype and got.shape == expected.shape, (field, got, expected)
      np.testing.assert_array_equal(got, expected)
