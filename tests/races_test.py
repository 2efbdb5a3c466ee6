"""Races and sharing: interrupted calls, forwarded functions, concurrent polls, copies, owned outputs."""

import contextlib
import copy
import os
import pickle
import sys
import threading
import time
import types

import numpy as np
import pytest
import tensorflow as tf
from tf_agents.policies import py_tf_eager_policy as tfa_eager
from tf_agents.trajectories import time_step as ts

from policy_runtime.policies import CheckpointFollower, SavedModelPyTFEagerPolicy
from conftest import scaled_checkpoint
import interrupts
from tools.fixtures import policy_zoo


def _q_step(value=1.0):
  return ts.TimeStep(np.int32(1), np.float32(0), np.float32(1), np.full(4, value, np.float32))


def _in_flight(policy):
  switch = policy._switch  # pylint: disable=protected-access
  copies = [switch.active] + ([policy._standby] if policy._standby else [])  # pylint: disable=protected-access
  return [switch.in_flight(c) for c in copies]


def test_an_exception_at_any_point_of_a_call_leaves_no_copy_busy(saved, tmp_path):
  """KeyboardInterrupt injected at every Python line an action() call runs."""
  fixture = saved("q_mlp")
  policy = SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True)
  checkpoint = scaled_checkpoint(fixture, str(tmp_path / "c_0000000001"), 1.0)
  policy.update_from_checkpoint(checkpoint)   # both copies exist from here on
  step = _q_step()
  for n in range(1, 10_000):
    events = [0]

    def tracer(frame, event, arg):
      if event in ("line", "call"):
        events[0] += 1
        if events[0] == n:
          raise KeyboardInterrupt
      return tracer

    sys.settrace(tracer)
    try:
      policy.action(step)
      finished = True
    except KeyboardInterrupt:
      finished = False
    finally:
      sys.settrace(None)
    assert _in_flight(policy) == [0, 0], f"interrupted at Python event {n}"
    if finished:
      break
  assert n > 1, "the call ran no Python code to interrupt"
  start = time.monotonic()
  policy.update_from_checkpoint(checkpoint)   # would wait forever on a leaked count
  assert time.monotonic() - start < 30


def test_forwarded_functions_hold_the_copy_they_run_on(tmp_path):
  policy = policy_zoo.q_mlp_policy()
  saver = policy_zoo.make_saver(policy)

  def spin(n):
    return tf.while_loop(lambda i, acc: i < n[0], lambda i, acc: (i + 1, acc + 1.0),
                         (tf.constant(0), tf.constant(0.0)))[1]

  saver.register_function("spin", spin, tf.TensorSpec([], tf.int32))
  saver.save(str(tmp_path / "p"))
  loaded = SavedModelPyTFEagerPolicy(str(tmp_path / "p"), load_specs_from_pbtxt=True)
  seen = []
  done = threading.Event()

  def watch():
    while not done.is_set():
      seen.append(_in_flight(loaded)[0])

  watcher = threading.Thread(target=watch)
  watcher.start()
  try:
    assert float(loaded.spin(tf.constant([3_000_000]))) == 3_000_000
  finally:
    done.set()
    watcher.join()
  assert max(seen) == 1 and _in_flight(loaded) == [0]


def test_concurrent_polls_never_go_back_to_older_weights(saved, tmp_path):
  fixture = saved("q_mlp")
  policy = SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True)
  root = tmp_path / "learner"
  scaled_checkpoint(fixture, str(root / "policy_checkpoint_0000000030"), 0.5)
  applied = []
  newer_applied = threading.Event()

  class Recording:
    """Records the order of updates; the update to step 30 is slow to start."""

    def update_from_checkpoint(self, path):
      if path.endswith("30"):
        newer_applied.wait(timeout=2.0)   # a poll for step 40 may run meanwhile
      policy.update_from_checkpoint(path)
      applied.append(int(path[-10:]))
      if path.endswith("40"):
        newer_applied.set()

  follower = CheckpointFollower(Recording(), str(root))
  first = threading.Thread(target=follower.poll)
  first.start()
  time.sleep(0.3)                        # the first poll has picked step 30
  scaled_checkpoint(fixture, str(root / "policy_checkpoint_0000000040"), 0.7)
  second = threading.Thread(target=follower.poll)
  second.start()
  first.join()
  second.join()
  assert applied == sorted(applied) and applied[-1] == 40
  assert follower.current_step == 40
  reference = SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True)
  reference.update_from_checkpoint(str(root / "policy_checkpoint_0000000040"))
  obs = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
  assert [int(policy.action(_q_step()._replace(observation=o)).action) for o in obs] == \
         [int(reference.action(_q_step()._replace(observation=o)).action) for o in obs]


@pytest.mark.parametrize("how", ["copy", "deepcopy", "pickle"])
def test_copying_or_pickling_is_a_clear_error(saved, how):
  policy = SavedModelPyTFEagerPolicy(saved("q_mlp").path, load_specs_from_pbtxt=True)
  do = {"copy": copy.copy, "deepcopy": copy.deepcopy, "pickle": pickle.dumps}[how]
  with pytest.raises(TypeError, match=r"cannot be pickled or copied .* pass the model path"):
    do(policy)


@pytest.fixture(scope="module")
def bias_policy(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("bias") / "policy")
  policy_zoo.save(policy_zoo.BiasInfoPolicy(), path)
  return path


def _bias_step(batch=None):
  outer = () if batch is None else (batch,)
  return ts.TimeStep(np.ones(outer, np.int32), np.zeros(outer, np.float32),
                     np.ones(outer, np.float32), np.ones(outer + (3,), np.float32))


@pytest.mark.parametrize("batch_time_steps", [True, False])
def test_writing_to_outputs_never_changes_the_weights(bias_policy, batch_time_steps):
  batch = None if batch_time_steps else 1
  expected = np.array([10.0, 20.0, 30.0], np.float32)
  tfa = tfa_eager.SavedModelPyTFEagerPolicy(bias_policy, load_specs_from_pbtxt=True,
                                            batch_time_steps=batch_time_steps)
  ours = SavedModelPyTFEagerPolicy(bias_policy, load_specs_from_pbtxt=True,
                                   batch_time_steps=batch_time_steps)
  for policy in (tfa, ours):
    step = policy.action(_bias_step(batch))
    step.info["bias"] *= 0
    if policy is ours:   # numpy arrays the caller owns, writable in place
      assert isinstance(step.action, np.ndarray) and step.action.flags.writeable
      np.add(step.action, 1, out=step.action)
    np.testing.assert_array_equal(np.reshape(policy.action(_bias_step(batch)).info["bias"], (3,)),
                                  expected)
  np.testing.assert_array_equal(ours.variables()[0].numpy(), expected)


def test_outputs_stay_as_returned_when_later_calls_run(bias_policy):
  policy = SavedModelPyTFEagerPolicy(bias_policy, load_specs_from_pbtxt=True, batch_time_steps=False)
  first = policy.action(_bias_step(1))
  kept = first.info["bias"].copy()
  for batch in (1, 2, 1):
    policy.action(_bias_step(batch))
  np.testing.assert_array_equal(first.info["bias"], kept)


_UPDATE_FILES = ("saved_model_policy.py", "loading.py", "lite.py", "lite_weights.py",
                 "lite_model.py", "pushed_variables.py", "storage.py", "checkpoint_errors.py",
                 "variable_restore.py", "safe_files.py")


def _batch_of_steps():
  """Nine observations in one batch: one call, so wholly one set of weights."""
  values = np.linspace(-2, 2, 9)
  return ts.TimeStep(np.ones(9, np.int32), np.zeros(9, np.float32), np.ones(9, np.float32),
                     np.repeat(values[:, None], 4, axis=1).astype(np.float32))


def _actions_on(policy, steps):
  return np.asarray(policy.action(steps).action)


@contextlib.contextmanager
def _four_actors(policy, steps, expected=()):
  """4 threads acting on `steps` while the block runs. Yields what they saw: `wrong` (actions
  matching none of `expected`, when given), `errors` (what they raised), `calls` (per thread).
  Fails if one is still running 60 s after the block."""
  seen = types.SimpleNamespace(wrong=[], errors=[], calls=[0] * 4)
  stop = threading.Event()

  def act(i):
    try:
      while not stop.is_set():
        got = _actions_on(policy, steps)
        seen.calls[i] += 1
        if expected and not any(np.array_equal(got, e) for e in expected):
          seen.wrong.append(got)
    except Exception as e:  # pylint: disable=broad-except
      seen.errors.append(e)

  actors = [threading.Thread(target=act, args=(i,)) for i in range(4)]
  for t in actors:
    t.start()
  try:
    yield seen
  finally:
    stop.set()
    for t in actors:
      t.join(timeout=60)
  assert not any(t.is_alive() for t in actors), "an actor hung"


@pytest.mark.parametrize("backend", ["tf", "lite"])
def test_an_interrupt_at_any_line_of_an_update_keeps_it_atomic(saved, tmp_path, backend):
  """KeyboardInterrupt injected at every line an update_from_checkpoint runs (sys.settrace),
  while 4 threads act: the copies stay two, every action comes wholly from one checkpoint's
  weights, and the next update takes effect."""
  fixture = saved("q_mlp")
  checkpoints = [scaled_checkpoint(fixture, str(tmp_path / f"c_000000000{i}"), scale)
                 for i, scale in enumerate([1.0, -1.5])]
  steps = _batch_of_steps()
  policy = SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True, backend=backend,
                                     batch_time_steps=False)
  expected = []
  for checkpoint in checkpoints:
    policy.update_from_checkpoint(checkpoint)
    expected.append(_actions_on(policy, steps))
  assert not np.array_equal(expected[0], expected[1])
  with _four_actors(policy, steps, expected) as seen:
    current = 1
    for n in range(1, 100_000):
      target = 1 - current
      finished = interrupts.finishes_unless_interrupted(
          n, _UPDATE_FILES, policy.update_from_checkpoint, checkpoints[target])
      assert policy._standby is not policy._switch.active, f"aliased at line {n}"  # pylint: disable=protected-access
      current = 1 - current
      policy.update_from_checkpoint(checkpoints[current])   # the next good update works
      np.testing.assert_array_equal(_actions_on(policy, steps), expected[current],
                                    err_msg=f"after an interrupt at line {n}")
      assert policy.get_train_step_from_last_restored_checkpoint_path() == current
      if finished:
        break
  assert n > 20, "the update ran too few lines to interrupt"
  assert not seen.wrong, f"{len(seen.wrong)} actions matched neither checkpoint"


@pytest.mark.parametrize("backend", ["tf", "lite"])
def test_an_interrupt_at_any_line_of_following_a_push_loses_no_push(saved, backend):
  """KeyboardInterrupt at every line of the action() call that follows a push: the push
  is followed by the next call, never dropped."""
  fixture = saved("q_mlp")
  steps = _batch_of_steps()
  policy = SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True, backend=backend,
                                     batch_time_steps=False)
  variables = policy.variables()
  originals = [v.numpy() for v in variables]
  scales = [1.0, -1.5]
  expected = []
  for scale in scales:
    for v, value in zip(variables, originals):
      v.assign(value * scale)
    expected.append(_actions_on(policy, steps))
  assert not np.array_equal(expected[0], expected[1])
  current = 1
  for n in range(1, 100_000):
    current = 1 - current
    for v, value in zip(variables, originals):
      v.assign(value * scales[current])
    finished = interrupts.finishes_unless_interrupted(n, _UPDATE_FILES, policy.action, steps)
    assert policy._standby is not policy._switch.active, f"aliased at line {n}"  # pylint: disable=protected-access
    np.testing.assert_array_equal(_actions_on(policy, steps), expected[current],
                                  err_msg=f"after an interrupt at line {n}")
    if finished:
      break
  assert n > 20, "following a push ran too few lines to interrupt"


@pytest.mark.parametrize("backend", ["tf", "lite"])
def test_an_interrupt_at_any_line_of_a_push_is_closed_by_the_next_push(saved, backend):
  """KeyboardInterrupt at every line the writer runs in the push tracker (eager writes, as a
  learner's loop may be interrupted mid-push) while 4 threads act: the copies stay two, and
  the next complete push is followed. (Each eager write is a push of its own, as in
  TF-Agents' class, so actors may see a set written part-way: that is not checked here.)"""
  fixture = saved("q_mlp")
  steps = _batch_of_steps()
  policy = SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True, backend=backend,
                                     batch_time_steps=False)
  variables = policy.variables()
  originals = [v.numpy() for v in variables]
  scales = [1.0, -1.5]

  def write(scale):
    for v, value in zip(variables, originals):
      v.assign(value * scale)

  expected = []
  for scale in scales:
    write(scale)
    expected.append(_actions_on(policy, steps))
  assert not np.array_equal(expected[0], expected[1])
  with _four_actors(policy, steps) as seen:
    current = 1
    for n in range(1, 100_000):
      finished = interrupts.finishes_unless_interrupted(n, ("pushed_variables.py",), write,
                                                        scales[1 - current])
      assert policy._standby is not policy._switch.active, f"aliased at line {n}"  # pylint: disable=protected-access
      write(scales[current])                  # the next complete push
      np.testing.assert_array_equal(_actions_on(policy, steps), expected[current],
                                    err_msg=f"after an interrupt at line {n}")
      current = 1 - current
      if finished:
        break
  assert not seen.errors, seen.errors[:3]
  assert all(seen.calls), f"an actor never acted: {seen.calls}"
  assert n > 5, "a push ran too few lines to interrupt"
