"""Bad input, bad files, old exports, hot-swap, concurrency and untrusted graphs."""

import os
import re
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf
from tf_agents.policies import py_tf_eager_policy as tfa_eager
from tf_agents.trajectories import time_step as ts

from policy_runtime.policies import CheckpointFollower, SavedModelPyTFEagerPolicy, UnsafeGraphError
from policy_runtime.policies.engines import lite
from bad_inputs import BAD_CALLS, lstm_step as _lstm_step
from conftest import act_during_swaps, run_threads, scaled_checkpoint
from tools.fixtures import policy_zoo


def _policy(saved, name="lstm_actor", **kwargs):
  return SavedModelPyTFEagerPolicy(saved(name).path, load_specs_from_pbtxt=True, **kwargs)


# -- Bad input ------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["tf", "lite"])
@pytest.mark.parametrize("name,mutate,error,pattern", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_input_is_a_clear_error_and_the_next_call_is_right(saved, name, mutate, error, pattern,
                                                               backend):
  policy = _policy(saved, backend=backend)
  assert policy.backend == backend
  good, state = _lstm_step(), policy.get_initial_state()
  expected = policy.action(good, state).action.copy()
  with pytest.raises(error) as info:
    policy.action(*mutate(good, state))
  assert type(info.value) in (ValueError, TypeError)
  first_line = str(info.value).splitlines()[0]
  assert re.search(pattern, first_line), first_line
  np.testing.assert_array_equal(policy.action(good, state).action, expected)


def test_unbatched_step_for_a_batched_policy(saved):
  policy = _policy(saved, batch_time_steps=False)
  with pytest.raises(ValueError, match=r"^time_step\.step_type: expected int32\[B\], got int32\[\] "
                                       r"\(missing the batch dimension\)"):
    policy.action(_lstm_step(), policy.get_initial_state(1))


# -- Files --------------------------------------------------------------------------

def _copy(saved, tmp_path, name="q_mlp"):
  target = tmp_path / name
  shutil.copytree(saved(name).path, target)
  return str(target)


def test_missing_model_directory(tmp_path):
  missing = str(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match=f"policy directory not found: {missing}"):
    SavedModelPyTFEagerPolicy(missing, load_specs_from_pbtxt=True)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_saved_model_pb_names_the_file(saved, tmp_path, damage):
  path = _copy(saved, tmp_path)
  pb = os.path.join(path, "saved_model.pb")
  data = open(pb, "rb").read()
  with open(pb, "wb") as f:
    f.write({"truncated": data[: len(data) // 3], "garbage": os.urandom(4096), "empty": b""}[damage])
  with pytest.raises(ValueError, match=f"SavedModel file {pb}"):
    SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True)


def test_missing_spec_file_names_the_file(saved, tmp_path):
  path = _copy(saved, tmp_path)
  os.remove(os.path.join(path, "policy_specs.pbtxt"))
  with pytest.raises(FileNotFoundError, match=os.path.join(path, "policy_specs.pbtxt")):
    SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True)


def _snapshot(policy, step, state):
  return [v.numpy().copy() for v in policy.variables()], policy.action(step, state).action.copy()


def _damage_checkpoint(directory, how):
  variables = os.path.join(directory, "variables")
  data = [f for f in os.listdir(variables) if ".data-" in f][0]
  if how == "truncated data":
    path = os.path.join(variables, data)
    content = open(path, "rb").read()
    open(path, "wb").write(content[: len(content) // 2])
  elif how == "corrupt index":
    open(os.path.join(variables, "variables.index"), "wb").write(os.urandom(300))
  elif how == "missing index":
    os.remove(os.path.join(variables, "variables.index"))
  elif how == "missing data":
    os.remove(os.path.join(variables, data))


@pytest.mark.parametrize("how,error", [
    ("missing directory", FileNotFoundError), ("missing index", FileNotFoundError),
    ("missing data", ValueError), ("truncated data", ValueError), ("corrupt index", ValueError),
    ("mismatched", ValueError)])
def test_failed_update_names_the_checkpoint_and_changes_nothing(saved, tmp_path, how, error):
  fixture = saved("lstm_actor")
  policy = _policy(saved)
  step, state = _lstm_step(), policy.get_initial_state()
  # A good update first, so both loaded copies exist and the standby holds older weights.
  policy.update_from_checkpoint(scaled_checkpoint(fixture, str(tmp_path / "good_0000000005"), 0.5))
  variables, action = _snapshot(policy, step, state)
  if how == "missing directory":
    bad = str(tmp_path / "absent_0000000009")
  elif how == "mismatched":
    other = saved("q_mlp")
    bad = str(tmp_path / "other_0000000009")
    other.saver.save_checkpoint(bad)
  else:
    bad = scaled_checkpoint(fixture, str(tmp_path / "bad_0000000009"), 3.0)
    _damage_checkpoint(bad, how)
  with pytest.raises(error, match=bad):
    policy.update_from_checkpoint(bad)
  after_vars, after_action = _snapshot(policy, step, state)
  for a, b in zip(variables, after_vars):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(action, after_action)
  assert policy.get_train_step_from_last_restored_checkpoint_path() == 5


# -- Policies whose object graph does not decode ------------------------------------

@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
  out = tmp_path_factory.mktemp("legacy")
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "legacy_export.py")
  result = subprocess.run([sys.executable, script, str(out)], capture_output=True, text=True,
                          env=dict(os.environ), timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return str(out)


def _legacy_rollout(policy, batch_time_steps, reference):
  # The inputs come from the file: importing legacy_export here would register
  # its TypeSpec in this process and make the export decode after all.
  state = policy.get_initial_state(1)
  actions = []
  for i in range(len(reference["step_type"])):
    step = ts.TimeStep(reference["step_type"][i], reference["reward"][i],
                       reference["discount"][i], {"position": reference["position"][i],
                                                  "velocity": reference["velocity"][i]})
    if batch_time_steps:
      step = tf.nest.map_structure(lambda a: a[0], step)
    out = policy.action(step, state)
    actions.append(np.reshape(out.action, (2,)))
    state = out.state
  return np.stack(actions)


def test_legacy_export_fails_in_tensorflow_and_tf_agents(legacy):
  with pytest.raises(ValueError, match="has not been registered"):
    tfa_eager.SavedModelPyTFEagerPolicy(os.path.join(legacy, "policy"), load_specs_from_pbtxt=True)


@pytest.mark.parametrize("batch_time_steps", [True, False])
@pytest.mark.parametrize("backend", ["tf", "lite"])
def test_legacy_export_loads_and_acts_like_the_original(legacy, batch_time_steps, backend):
  reference = np.load(os.path.join(legacy, "reference.npz"))
  policy = SavedModelPyTFEagerPolicy(os.path.join(legacy, "policy"), load_specs_from_pbtxt=True,
                                     batch_time_steps=batch_time_steps, backend=backend)
  assert policy.load_mode.startswith("flat signatures only (The type 'legacy_test.WrappedSpec'")
  assert policy.backend == backend
  tol = 1e-6 if backend == "tf" else lite.FLOAT_ATOL   # LiteRT: the tolerance validation uses
  np.testing.assert_allclose(_legacy_rollout(policy, batch_time_steps, reference), reference["before"],
                             rtol=tol, atol=tol)
  assert policy.get_train_step() == 42
  metadata = policy.get_metadata()
  assert metadata["env_name"] == b"test-env" and metadata["version"] == 3
  assert metadata["env_name"].dtype == object  # as TF returns strings
  assert len(policy.variables()) == len(policy_zoo.lstm_actor_policy().variables())
  policy.update_from_checkpoint(os.path.join(legacy, "policy_checkpoint_0000000077"))
  assert policy.get_train_step_from_last_restored_checkpoint_path() == 77
  np.testing.assert_allclose(_legacy_rollout(policy, batch_time_steps, reference), reference["after"],
                             rtol=tol, atol=tol)
  with pytest.raises(AttributeError, match="loaded from its flat signatures only"):
    policy.wrapped  # pylint: disable=pointless-statement


# -- Hot-swap and concurrency ---------------------------------------------------------

def test_actions_during_100_swaps_use_old_or_new_weights_never_a_mix(saved, tmp_path):
  fixture = saved("lstm_actor")
  a = scaled_checkpoint(fixture, str(tmp_path / "a_0000000001"), 1.0)
  b = scaled_checkpoint(fixture, str(tmp_path / "b_0000000002"), -2.0)
  policy = _policy(saved)
  step, state = _lstm_step(), policy.get_initial_state()
  policy.update_from_checkpoint(a)
  ref_a = policy.action(step, state)
  ref_a = (ref_a.action.copy(), [s.copy() for s in ref_a.state])
  policy.update_from_checkpoint(b)
  ref_b = policy.action(step, state)
  ref_b = (ref_b.action.copy(), [s.copy() for s in ref_b.state])
  assert not np.allclose(ref_a[0], ref_b[0])

  failures, counts = [], [0] * 8

  def act(i):
    out = policy.action(step, state)
    matches = [np.array_equal(out.action, r[0]) and
               all(np.array_equal(x, y) for x, y in zip(out.state, r[1])) for r in (ref_a, ref_b)]
    if not any(matches):
      failures.append(out.action.copy())
    counts[i] += 1

  act_during_swaps(policy, [a, b], swaps=100, threads=8, act=act)
  assert not failures, f"{len(failures)} mixed actions, e.g. {failures[0]}"
  assert all(c > 0 for c in counts)


def test_16_threads_get_what_serial_calls_get(saved):
  policy = _policy(saved)
  rng = np.random.default_rng(3)
  steps = [_lstm_step(rng) for _ in range(32)]
  state = policy.get_initial_state()
  serial = [policy.action(s, state).action.copy() for s in steps]
  results = {}

  def act(i):
    for k in range(len(steps)):
      j = (i + k) % len(steps)
      results[(i, j)] = policy.action(steps[j], state).action.copy()

  assert not run_threads(16, act)
  assert len(results) == 16 * 32
  for (i, j), action in results.items():
    np.testing.assert_array_equal(action, serial[j])


def test_16_threads_with_mixed_batch_sizes_get_what_serial_calls_get(saved):
  policy = _policy(saved, batch_time_steps=False)
  rng = np.random.default_rng(4)
  cases = []
  for k in range(32):
    batch = 1 + k % 5
    cases.append((_lstm_step(rng, batch=batch), policy.get_initial_state(batch)))
  serial = [policy.action(s, st) for s, st in cases]
  serial = [(out.action.copy(), [x.copy() for x in out.state]) for out in serial]
  failures = []

  def act(i):
    for k in range(len(cases)):
      j = (i * 7 + k) % len(cases)
      out = policy.action(*cases[j])
      if not (np.array_equal(out.action, serial[j][0]) and
              all(np.array_equal(a, b) for a, b in zip(out.state, serial[j][1]))):
        failures.append(j)

  assert not run_threads(16, act)
  assert not failures


def test_follower_applies_the_newest_complete_checkpoint(saved, tmp_path):
  fixture = saved("lstm_actor")
  policy = _policy(saved)
  root = tmp_path / "learner"
  scaled_checkpoint(fixture, str(root / "policy_checkpoint_0000000010"), 0.5)
  scaled_checkpoint(fixture, str(root / "policy_checkpoint_0000000020"), 0.7)
  _damage_checkpoint(scaled_checkpoint(fixture, str(root / "policy_checkpoint_0000000030"), 0.9),
                     "truncated data")
  writing = scaled_checkpoint(fixture, str(root / "policy_checkpoint_0000000040"), 1.1)
  index = os.path.join(writing, "variables", "variables.index")
  os.rename(index, index + ".tmp")  # still being written: no index yet
  follower = CheckpointFollower(policy, str(root))
  assert follower.poll() == str(root / "policy_checkpoint_0000000020")
  assert policy.get_train_step_from_last_restored_checkpoint_path() == 20
  assert follower.poll() is None            # nothing newer that works
  os.rename(index + ".tmp", index)
  with follower:                           # the background thread picks it up
    for _ in range(200):
      if follower.current_step == 40:
        break
      threading.Event().wait(0.05)
  assert policy.get_train_step_from_last_restored_checkpoint_path() == 40


# -- Untrusted graphs -------------------------------------------------------------------

def test_graph_that_writes_files_is_refused_unless_allowed(tmp_path):
  policy = policy_zoo.q_mlp_policy()
  saver = policy_zoo.make_saver(policy)
  target = str(tmp_path / "written.txt")

  def leak(x):
    tf.io.write_file(target, tf.strings.reduce_join(tf.strings.as_string(x)))
    return x

  saver.register_function("leak", leak, tf.TensorSpec([], tf.float32))
  saver.save(str(tmp_path / "p"))
  with pytest.raises(UnsafeGraphError, match=r"function 'leak' uses file system ops \(WriteFile\)"):
    SavedModelPyTFEagerPolicy(str(tmp_path / "p"), load_specs_from_pbtxt=True)
  allowed = SavedModelPyTFEagerPolicy(str(tmp_path / "p"), load_specs_from_pbtxt=True,
                                      allow_unsafe_ops=True)
  assert "file system" in allowed.op_families()


@pytest.mark.parametrize("name", ["q_mlp", "lstm_actor", "ppo_collect", "random", "q_8_leaves"])
def test_ordinary_exports_load_without_opt_in(saved, name):
  families = _policy(saved, name).op_families()
  assert not {"file system", "network", "python", "datasets", "not allow-listed"} & set(families)
