"""SavedModelPyTFEagerPolicy against TF-Agents' own, on real PolicySaver exports."""

import os

import numpy as np
import pytest
import tensorflow as tf
from tf_agents.policies import py_tf_eager_policy as tfa_eager
from tf_agents.policies import py_policy
from tf_agents.specs import array_spec
from tf_agents.specs import tensor_spec
from tf_agents.trajectories import policy_step
from tf_agents.trajectories import time_step as ts

import conftest
from policy_runtime.policies import PyTFEagerPolicyBase, SavedModelPyTFEagerPolicy
from tools.fixtures import policy_zoo


def _sample(spec, rng, outer):
  if isinstance(spec, array_spec.BoundedArraySpec):
    return array_spec.sample_bounded_spec(
        array_spec.BoundedArraySpec(outer + spec.shape, spec.dtype, spec.minimum,
                                    spec.maximum), rng)
  return rng.standard_normal(outer + spec.shape).astype(spec.dtype)


def _time_steps(spec, count, batch=None, seed=0):
  """`count` time steps sampled from `spec`; the first is FIRST, then MID."""
  rng = np.random.RandomState(seed)
  outer = () if batch is None else (batch,)
  steps = []
  for i in range(count):
    obs = tf.nest.map_structure(lambda s: _sample(s, rng, outer), spec.observation)
    step_type = np.full(outer, ts.StepType.FIRST if i == 0 else ts.StepType.MID, np.int32)
    steps.append(ts.TimeStep(step_type=step_type,
                             reward=rng.standard_normal(outer).astype(np.float32),
                             discount=np.ones(outer, np.float32),
                             observation=obs))
  return steps


class _SavedFunctionReference:
  """The restored `action` called directly, for exports TF-Agents cannot load."""

  def __init__(self, path):
    self._saved = tf.saved_model.load(path)

  def get_initial_state(self, batch_size):
    return self._saved.get_initial_state()

  def action(self, time_step, policy_state):
    return self._saved.action(tf.nest.map_structure(tf.constant, time_step), policy_state)


def _ours_and_theirs(fixture, batch_time_steps):
  ours = SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True,
                                   batch_time_steps=batch_time_steps)
  if fixture.batch_size is not None:
    return ours, _SavedFunctionReference(fixture.path)
  theirs = tfa_eager.SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True,
                                               batch_time_steps=batch_time_steps)
  return ours, theirs


def _assert_in_spec(values, specs, batched):
  for value, spec in zip(tf.nest.flatten(values), tf.nest.flatten(specs)):
    value = np.asarray(value)
    assert value.dtype == spec.dtype
    assert value.shape[int(batched):] == spec.shape
    if isinstance(spec, array_spec.BoundedArraySpec):
      assert np.all(value >= spec.minimum) and np.all(value <= spec.maximum)


# A policy saved with a fixed batch of 4 cannot take single steps (tested below).
_CASES = [(name, mode) for name in conftest.ALL_POLICIES for mode in (True, False)
          if not (mode and name == "q_fixed_batch")]


@pytest.mark.parametrize("name,batch_time_steps", _CASES)
def test_actions_match_tf_agents(saved, name, batch_time_steps):
  fixture = saved(name)
  ours, theirs = _ours_and_theirs(fixture, batch_time_steps)
  batch = None if batch_time_steps else (fixture.batch_size or 3)
  state_batch = 1 if batch_time_steps else batch
  our_state = ours.get_initial_state(state_batch)
  their_state = theirs.get_initial_state(state_batch)
  for step in _time_steps(ours.time_step_spec, 5, batch):
    mine = ours.action(step, our_state)
    ref = theirs.action(step, their_state)
    assert isinstance(mine, policy_step.PolicyStep)
    tf.nest.assert_same_structure(mine, ref)
    if fixture.deterministic:
      tf.nest.map_structure(np.testing.assert_array_equal, mine.action, ref.action)
      tf.nest.map_structure(np.testing.assert_array_equal, mine.state, _numpy(ref.state))
      tf.nest.map_structure(np.testing.assert_array_equal, mine.info, ref.info)
    _assert_in_spec(mine.action, ours.action_spec, batched=not batch_time_steps)
    _assert_in_spec(mine.info, ours.info_spec, batched=not batch_time_steps)
    our_state, their_state = mine.state, ref.state


def _numpy(nest):
  return tf.nest.map_structure(lambda t: np.asarray(t), nest)


@pytest.mark.parametrize("name", ["lstm_actor", "q_8_leaves"])
def test_single_threaded_executor_gives_the_same_actions(saved, name):
  fixture = saved(name)
  fast = SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True,
                                   single_threaded_executor=True)
  ref = SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True)
  fast_state, ref_state = fast.get_initial_state(), ref.get_initial_state()
  for step in _time_steps(ref.time_step_spec, 4):
    a, b = fast.action(step, fast_state), ref.action(step, ref_state)
    tf.nest.map_structure(np.testing.assert_array_equal, a, b)
    fast_state, ref_state = a.state, b.state


def test_returned_state_feeds_straight_back(saved):
  policy = SavedModelPyTFEagerPolicy(saved("lstm_actor").path, load_specs_from_pbtxt=True)
  state = policy.get_initial_state()
  assert [s.shape for s in state] == [(1, 16), (1, 16)]
  step = _time_steps(policy.time_step_spec, 1)[0]
  for _ in range(3):
    out = policy.action(step, state)
    assert out.action.shape == (2,)
    assert all(isinstance(s, np.ndarray) and s.shape == (1, 16) for s in out.state)
    state = out.state
  assert np.any(np.asarray(state[0]) != 0)


def test_tf_agents_initial_state_without_batch_size_is_unusable_but_ours_works(saved):
  fixture = saved("lstm_actor")
  theirs = tfa_eager.SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True)
  step = _time_steps(theirs.time_step_spec, 1)[0]
  with pytest.raises(Exception):
    theirs.action(step, theirs.get_initial_state())
  ours = SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True)
  expected = theirs.action(step, theirs.get_initial_state(1))
  np.testing.assert_array_equal(ours.action(step, ours.get_initial_state()).action,
                                expected.action)


def test_fixed_batch_policy_loads_where_tf_agents_fails(saved):
  fixture = saved("q_fixed_batch")
  with pytest.raises(ValueError, match="Could not find matching concrete function"):
    tfa_eager.SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True,
                                        batch_time_steps=False)
  with pytest.raises(ValueError, match="fixed batch size of 4"):
    SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True)
  policy = SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True,
                                     batch_time_steps=False)
  steps = _time_steps(policy.time_step_spec, 1, batch=4)
  assert policy.action(steps[0]).action.shape == (4,)
  with pytest.raises(ValueError, match=r"time_step\.step_type: expected int32\[4\], got int32\[3\]"):
    policy.action(_time_steps(policy.time_step_spec, 1, batch=3)[0])


def test_is_a_py_policy_with_tf_agents_specs(saved):
  fixture = saved("lstm_actor")
  ours = SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True)
  theirs = tfa_eager.SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True)
  assert isinstance(ours, py_policy.PyPolicy)
  for attr in ("time_step_spec", "action_spec", "policy_state_spec", "info_spec",
               "policy_step_spec", "trajectory_spec", "collect_data_spec"):
    assert getattr(ours, attr) == getattr(theirs, attr), attr


def test_specs_from_arguments(saved):
  fixture = saved("q_mlp")
  tss = tensor_spec.to_nest_array_spec(fixture.tf_policy.time_step_spec)
  act = tensor_spec.to_nest_array_spec(fixture.tf_policy.action_spec)
  policy = SavedModelPyTFEagerPolicy(fixture.path, tss, act)
  assert policy.time_step_spec == tss and policy.action_spec == act
  assert policy.policy_state_spec == () and policy.info_spec == ()
  step = _time_steps(tss, 1)[0]
  assert policy.action(step).action.shape == ()


def test_missing_specs_say_how_to_fix(saved):
  with pytest.raises(ValueError, match="load_specs_from_pbtxt=True"):
    SavedModelPyTFEagerPolicy(saved("q_mlp").path)


def test_missing_directory():
  with pytest.raises(FileNotFoundError, match="/no/such/policy"):
    SavedModelPyTFEagerPolicy("/no/such/policy", load_specs_from_pbtxt=True)


def test_train_step_metadata_and_variables(saved):
  fixture = saved("q_mlp")
  policy = SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True)
  assert policy.get_train_step() == 42
  metadata = policy.get_metadata()
  assert metadata["env_name"] == b"test-env" and metadata["version"] == 3
  assert all(isinstance(v, np.ndarray) for v in metadata.values())
  theirs = tfa_eager.SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True)
  mine = [v.numpy() for v in policy.variables()]
  ref = [v.numpy() for v in theirs.variables()]
  assert len(mine) == len(ref) == len(fixture.tf_policy.variables()) > 0
  for a, b in zip(mine, ref):
    np.testing.assert_array_equal(a, b)
  assert policy.get_train_step_from_last_restored_checkpoint_path() is None


def test_update_from_checkpoint_changes_weights_and_outputs(saved, tmp_path):
  fixture = saved("lstm_actor")
  checkpoint = str(tmp_path / "policy_checkpoint_0000001234")
  conftest.scaled_checkpoint(fixture, checkpoint, scale=-2.0)
  policy = SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True)
  theirs = tfa_eager.SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True)
  step = _time_steps(policy.time_step_spec, 1)[0]
  before_vars = [v.numpy().copy() for v in policy.variables()]
  before = policy.action(step, policy.get_initial_state()).action.copy()
  policy.update_from_checkpoint(checkpoint)
  theirs.update_from_checkpoint(checkpoint)
  after = policy.action(step, policy.get_initial_state()).action
  assert not np.array_equal(before, after)
  assert any(not np.array_equal(a, v.numpy()) for a, v in zip(before_vars, policy.variables()))
  np.testing.assert_array_equal(after, theirs.action(step, theirs.get_initial_state(1)).action)
  assert policy.get_train_step_from_last_restored_checkpoint_path() == 1234


@pytest.mark.parametrize("backend", ["tf", "lite"])
def test_update_from_a_policy_saver_save_directory(saved, tmp_path, backend):
  """TF-Agents documents save() directories as checkpoints; its own class fails on them."""
  fixture = saved("lstm_actor")
  flipped_dir = str(tmp_path / "flipped_export")
  for v in fixture.tf_policy.variables():
    v.assign(-v)
  try:
    fixture.saver.save(flipped_dir)
  finally:
    for v in fixture.tf_policy.variables():
      v.assign(-v)
  flipped = SavedModelPyTFEagerPolicy(flipped_dir, load_specs_from_pbtxt=True)
  policy = SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True, backend=backend)
  step = _time_steps(policy.time_step_spec, 1)[0]
  before = policy.action(step, policy.get_initial_state()).action.copy()
  policy.update_from_checkpoint(flipped_dir)
  after = policy.action(step, policy.get_initial_state()).action
  want = flipped.action(step, flipped.get_initial_state()).action
  assert not np.allclose(before, want)
  np.testing.assert_allclose(after, want, rtol=1e-5, atol=1e-5)
  with pytest.raises(AssertionError, match="not bound to checkpointed values"):
    tfa_eager.SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True
                                        ).update_from_checkpoint(flipped_dir)
  other = str(tmp_path / "other_export")
  policy_zoo.save(policy_zoo.q_mlp_policy(), other)
  with pytest.raises(ValueError, match=f"^cannot restore checkpoint {other}: "):
    policy.update_from_checkpoint(other)
  np.testing.assert_array_equal(policy.action(step, policy.get_initial_state()).action, after)


def test_registered_functions_are_callable(tmp_path):
  policy = policy_zoo.q_mlp_policy()
  saver = policy_zoo.make_saver(policy)
  obs_spec = tf.TensorSpec([4], tf.float32, "obs")  # PolicySaver adds the batch
  q_network = policy.wrapped_policy._q_network
  saver.register_function("q_values", tf.function(lambda obs: q_network(obs)[0]), obs_spec)
  saver.save(str(tmp_path / "p"))
  loaded = SavedModelPyTFEagerPolicy(str(tmp_path / "p"), load_specs_from_pbtxt=True)
  obs = np.ones([2, 4], np.float32)
  np.testing.assert_allclose(loaded.q_values(obs).numpy(), q_network(obs)[0].numpy(), rtol=1e-6)
  with pytest.raises(AttributeError):
    loaded.no_such_function  # pylint: disable=pointless-statement


def test_seed_on_deterministic_policy_changes_nothing(saved):
  policy = SavedModelPyTFEagerPolicy(saved("q_mlp").path, load_specs_from_pbtxt=True)
  step = _time_steps(policy.time_step_spec, 1)[0]
  np.testing.assert_array_equal(policy.action(step, seed=7).action, policy.action(step).action)


def test_seed_on_stochastic_policy_is_refused_with_a_reason(saved):
  policy = SavedModelPyTFEagerPolicy(saved("ppo_collect").path, load_specs_from_pbtxt=True)
  step = _time_steps(policy.time_step_spec, 1)[0]
  with pytest.raises(ValueError, match=r"PolicySaver\(policy, seed=\.\.\.\)"):
    policy.action(step, seed=1)
  assert policy.action(step).action.shape == (2,)


def test_base_class_wraps_a_live_tf_policy():
  tf_policy = policy_zoo.lstm_actor_policy()
  to_array = tensor_spec.to_nest_array_spec
  ours = PyTFEagerPolicyBase(tf_policy, to_array(tf_policy.time_step_spec),
                             to_array(tf_policy.action_spec),
                             to_array(tf_policy.policy_state_spec), to_array(tf_policy.info_spec))
  theirs = tfa_eager.PyTFEagerPolicy(tf_policy)
  state, their_state = ours.get_initial_state(), theirs.get_initial_state(1)
  for step in _time_steps(ours.time_step_spec, 3):
    mine, ref = ours.action(step, state), theirs.action(step, their_state)
    np.testing.assert_array_equal(mine.action, ref.action)
    state, their_state = mine.state, ref.state


def test_loads_in_a_fresh_process(saved):
  # The PPO export's distribution specs need TFP registered before loading.
  import subprocess
  import sys
  code = (
      "import sys; from policy_runtime.policies import SavedModelPyTFEagerPolicy\n"
      f"p = SavedModelPyTFEagerPolicy({saved('ppo_collect').path!r}, load_specs_from_pbtxt=True)\n"
      "print(p.action(p.time_step_spec.__class__(*[__import__('numpy').zeros(s.shape, s.dtype) "
      "for s in p.time_step_spec])).action.shape)\n")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ), timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().endswith("(2,)")


_PACKAGE_FACE = """
import sys
from policy_runtime import policies
from policy_runtime.policies import compiled, episodes, time_steps
from policy_runtime.policies.saved_model import compat
from policy_runtime.policies.runtime import compiled as runtime_compiled
print("forwarded:", compiled is runtime_compiled, episodes.__name__, time_steps.__name__)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tf_agents", "gym"))
print("before:", heavy)
from policy_runtime.policies import SavedModelPyTFEagerPolicy, DynamicBatchingPolicy, CheckpointFollower
print("after:", "tensorflow" in sys.modules, "tf_agents" in sys.modules)
print("all:", sorted(policies.__all__) == sorted(n for n in dir(policies) if n in policies.__all__))
"""


def test_the_package_face_imports_tensorflow_only_when_asked():
  import subprocess
  import sys
  result = subprocess.run([sys.executable, "-c", _PACKAGE_FACE], capture_output=True, text=True,
                          env=dict(os.environ), timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.strip().splitlines()
  assert lines[-4:] == ["forwarded: True policy_runtime.policies.runtime.episodes "
                        "policy_runtime.policies.runtime.time_steps",
                        "before: []", "after: True True", "all: True"]
  assert "Gym has been unmaintained" not in result.stderr
  with pytest.raises(AttributeError, match="has no attribute 'NoSuchName'"):
    from policy_runtime import policies  # pylint: disable=import-outside-toplevel
    getattr(policies, "NoSuchName")


def test_a_public_name_whose_module_fails_to_import_says_why(tmp_path, monkeypatch):
  # An AttributeError while importing (TFP against a TF it does not match raises
  # one) must not become Python's bare "cannot import name".
  from policy_runtime import policies  # pylint: disable=import-outside-toplevel
  (tmp_path / "mismatched_stack_module.py").write_text(
      "raise AttributeError(\"module 'keras' has no attribute '__internal__'\")\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.setitem(policies._EXPORTS, "Mismatched", "mismatched_stack_module")
  with pytest.raises(ImportError, match=r"Mismatched: importing mismatched_stack_module failed: "
                                        r"AttributeError: .*'__internal__'"):
    from policy_runtime.policies import Mismatched  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
