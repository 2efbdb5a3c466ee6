"""Weights pushed into `variables()` reach `action()`, on every engine (and TF-Agents' checkpoint contract).

TF-Agents' distributed actors hold `policy.variables()` once and assign new
values to it (`ReverbVariableContainer.update`, a `tf.function`); its
evaluators retry `update_from_checkpoint` on `(tf.errors.OpError, IndexError)`.
The reference for every action here is TF-Agents' own
`SavedModelPyTFEagerPolicy` given the same weights.
"""

import asyncio
import os
import shutil
import threading
import time

import numpy as np
import pytest
import tensorflow as tf
from tf_agents.policies import py_tf_eager_policy
from tf_agents.trajectories import time_step as ts
from tf_agents.utils import common
from tf_agents.utils import nest_utils

from conftest import load_saved, lstm_episodes, q_steps, run_threads, scaled_checkpoint
from policy_runtime.policies import DynamicBatchingPolicy
from policy_runtime.policies import SavedModelPyTFEagerPolicy
from policy_runtime.policies.engines import lite_validation
from tools.fixtures import policy_zoo

BACKENDS = ("tf", "lite", "auto")


@common.function
def push(variables, values):
  """What `ReverbVariableContainer.update` runs once it has pulled the values."""
  nest_utils.assert_same_structure(variables, values, check_types=False)
  for variable, value in zip(tf.nest.flatten(variables), tf.nest.flatten(values)):
    variable.assign(value)


def _reference(fixture):
  return py_tf_eager_policy.SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True)


def _set(reference, values):
  for variable, value in zip(reference.variables(), values):
    variable.assign(value)


def _steps(name: str, count: int = 32):
  if name == "lstm_actor":
    return [e[0] for e in lstm_episodes(count, 1)]
  return q_steps(count, seed=3)


def _actions(policy, steps, batch_time_steps=True):
  """Actions on `steps` (each from the initial state), as float64 arrays."""
  if batch_time_steps:
    state = policy.get_initial_state(1)   # TF-Agents' class gives a batch of 0 without it
    return np.stack([np.asarray(policy.action(s, state).action, np.float64) for s in steps])
  batch = tf.nest.map_structure(lambda *x: np.stack(x), *steps)
  state = policy.get_initial_state(len(steps))
  return np.asarray(policy.action(batch, state).action, np.float64)


def _assert_acts_like(policy, reference, steps, backend, batch_time_steps=True):
  got = _actions(policy, steps, batch_time_steps)
  want = _actions(reference, steps)
  if policy.backend == "tf" or np.issubdtype(policy.action_spec.dtype, np.integer):
    np.testing.assert_array_equal(got, want)
  else:
    np.testing.assert_allclose(got, want, rtol=lite_validation.FLOAT_RTOL,
                               atol=lite_validation.FLOAT_ATOL, err_msg=backend)


def _flipped(values, scale=-1.0):
  """The weights with the last layer times `scale` (greedy actions move)."""
  out = [np.array(v) for v in values]
  out[-2] = out[-2] * scale
  out[-1] = out[-1] * scale
  return out


@pytest.mark.parametrize("batch_time_steps", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["q_mlp", "lstm_actor"])
def test_pushes_and_checkpoints_mix_on_one_variable_list(saved, tmp_path, name, backend,
                                                         batch_time_steps):
  fixture = saved(name)
  policy = load_saved(saved, name, backend, batch_time_steps=batch_time_steps)
  reference = _reference(fixture)
  steps = _steps(name)
  held = policy.variables()
  original = [v.numpy() for v in held]
  assert [v.shape for v in held] == [v.shape for v in reference.variables()]

  push(held, _flipped(original))                       # a push...
  _set(reference, _flipped(original))
  assert not np.array_equal(_actions(policy, steps, batch_time_steps),
                            _actions(_reference(fixture), steps)), "the push changed nothing"
  _assert_acts_like(policy, reference, steps, backend, batch_time_steps)

  checkpoint = scaled_checkpoint(fixture, str(tmp_path / "policy_checkpoint_0007"), 0.5)
  policy.update_from_checkpoint(checkpoint)             # ...then a checkpoint...
  reference.update_from_checkpoint(checkpoint)
  assert policy.variables() is held
  for variable, want in zip(held, reference.variables()):
    np.testing.assert_array_equal(variable.numpy(), want.numpy())
  _assert_acts_like(policy, reference, steps, backend, batch_time_steps)

  for variable, value in zip(held, _flipped(original, 2.0)):   # ...then eager pushes
    variable.assign(value)
  _set(reference, _flipped(original, 2.0))
  _assert_acts_like(policy, reference, steps, backend, batch_time_steps)
  assert policy.backend == ("tf" if backend == "tf" else "lite")


def test_a_push_on_lite_converts_nothing(saved):
  policy = load_saved(saved, "lstm_actor", "lite")
  engine = policy._engine  # pylint: disable=protected-access
  assert engine.weights_reason is None
  conversions, report = engine.conversions, policy.lite_validation
  held = policy.variables()
  original = [v.numpy() for v in held]
  for k in range(5):
    push(held, _flipped(original, (-1.0) ** (k + 1)))
    policy.action(_steps("lstm_actor", 1)[0], policy.get_initial_state())
  assert engine.conversions == conversions
  assert policy.lite_validation is report   # the model pushes write into was validated at load
  assert policy.lite_runtime == "native"


@pytest.mark.parametrize("backend", ["tf", "lite"])
def test_pushes_are_atomic_while_16_threads_act(saved, backend):
  """200 pushes alternate two weight sets: every action comes wholly from one of them."""
  policy = load_saved(saved, "lstm_actor", backend)
  held = policy.variables()
  first = [v.numpy() for v in held]
  second = [v * np.float32(0.5) for v in first]
  steps = _steps("lstm_actor", 16)
  expected = []
  for values in (first, second):
    push(held, values)
    expected.append(_actions(policy, steps))
  assert not np.any(np.all(expected[0] == expected[1], axis=-1)), "the sets act alike"
  stop = threading.Event()
  seen = np.zeros(2, np.int64)
  state = policy.get_initial_state()

  def act(i):
    while not stop.is_set():
      got = np.asarray(policy.action(steps[i], state).action, np.float64)
      matches = [np.array_equal(got, e[i]) for e in expected]
      assert any(matches), f"thread {i}: {got} is neither weight set's {expected[0][i]}, " \
                           f"{expected[1][i]}"
      seen[matches.index(True)] += 1

  def pushes():
    try:
      for k in range(200):
        push(held, first if k % 2 else second)
        time.sleep(0.001)
    finally:
      stop.set()

  pusher = threading.Thread(target=pushes)
  pusher.start()
  errors = run_threads(16, act)
  pusher.join()
  assert not errors, errors[0]
  assert seen.min() > 0, seen


@pytest.mark.parametrize("backend", ["tf", "lite"])
def test_dynamic_batching_and_coroutines_follow_pushes(saved, backend):
  fixture = saved("q_mlp")
  batched = load_saved(saved, "q_mlp", backend, batch_time_steps=False)
  reference = _reference(fixture)
  steps = _steps("q_mlp", 64)
  with DynamicBatchingPolicy(batched, max_batch_size=16) as policy:
    held = policy.variables()
    assert held is batched.variables()
    new = _flipped([v.numpy() for v in held])
    push(held, new)
    _set(reference, new)
    want = _actions(reference, steps)
    got = np.zeros_like(want)

    def act(i):
      for j in range(i, len(steps), 8):
        got[j] = policy.action(steps[j]).action

    assert not run_threads(8, act)
    np.testing.assert_array_equal(got, want)

    push(held, _flipped(new, 3.0))
    _set(reference, _flipped(new, 3.0))
    want = _actions(reference, steps)

    async def main():
      return await asyncio.gather(*(policy.action_async(s) for s in steps))

    got = np.array([np.asarray(o.action, np.float64) for o in asyncio.run(main())])
    np.testing.assert_array_equal(got, want)


def test_a_push_of_another_shape_is_refused_and_changes_nothing(saved):
  policy = load_saved(saved, "q_mlp", "lite")
  steps = _steps("q_mlp")
  before = _actions(policy, steps)
  held = policy.variables()
  with pytest.raises(ValueError, match="[Ss]hape"):
    held[0].assign(np.zeros((5, 64), np.float32))
  with pytest.raises(ValueError):
    push(held[:1], [np.zeros((5, 64), np.float32)])
  np.testing.assert_array_equal(_actions(policy, steps), before)


@pytest.mark.parametrize("backend", ["lite", "auto"])
def test_weights_lite_cannot_write_are_converted_and_followed(tmp_path, backend):
  path = str(tmp_path / "softplus")
  policy_zoo.save(policy_zoo.SoftplusWeightsPolicy(), path)
  policy = SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True, backend=backend)
  engine = policy._engine  # pylint: disable=protected-access
  assert policy.backend == "lite"
  assert "computed from the weights at conversion" in engine.weights_reason
  assert "converted" in policy.lite_weights
  reference = py_tf_eager_policy.SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True)
  conversions = engine.conversions
  held = policy.variables()
  new = [-held[0].numpy()[::-1]]
  push(held, new)
  _set(reference, new)
  steps = [ts.TimeStep(np.int32(1), np.float32(0), np.float32(1), o) for o in
           np.random.default_rng(4).standard_normal((32, 3)).astype(np.float32)]
  np.testing.assert_array_equal(_actions(policy, steps), _actions(reference, steps))
  assert engine.conversions == conversions + 1
  assert policy.lite_validation is not None


@pytest.mark.parametrize("name", ["atari_q", "sac_actor", "boltzmann_greedy"])
def test_scaled_weights_are_written_too(tmp_path, name):
  """Weights the converter multiplied by a constant (1/255, a temperature) need no conversion."""
  build = {"atari_q": policy_zoo.atari_q_policy,
           "sac_actor": lambda: policy_zoo.sac_actor_policy(fc=(32, 32)),
           "boltzmann_greedy": _greedy_boltzmann}[name]
  path = str(tmp_path / name)
  policy_zoo.save(build(), path)
  policy = SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True, backend="lite")
  assert policy.lite_weights == "written into the model", policy.lite_weights
  reference = py_tf_eager_policy.SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True)
  conversions = policy._engine.conversions  # pylint: disable=protected-access
  held = policy.variables()
  new = _flipped([v.numpy() * np.float32(1.5) for v in held])
  push(held, new)
  _set(reference, new)
  rng = np.random.default_rng(6)
  spec = policy.time_step_spec.observation
  if spec.dtype == np.uint8:
    observations = rng.integers(0, 256, (32,) + spec.shape, dtype=np.uint8)
  else:
    observations = rng.standard_normal((32,) + spec.shape).astype(spec.dtype)
  steps = [ts.TimeStep(np.int32(1), np.float32(0), np.float32(1), o) for o in observations]
  _assert_acts_like(policy, reference, steps, "lite")
  assert policy._engine.conversions == conversions  # pylint: disable=protected-access


def _greedy_boltzmann():
  """argmax of Q / temperature: the converter folds the division into the last layer."""
  from tf_agents.policies import boltzmann_policy  # pylint: disable=import-outside-toplevel
  from tf_agents.policies import greedy_policy  # pylint: disable=import-outside-toplevel
  from tf_agents.policies import q_policy  # pylint: disable=import-outside-toplevel
  q = policy_zoo.q_mlp_policy(num_actions=4, seed=2).wrapped_policy
  return greedy_policy.GreedyPolicy(boltzmann_policy.BoltzmannPolicy(
      q_policy.QPolicy(q.time_step_spec, q.action_spec, q_network=q._q_network), 0.5))  # pylint: disable=protected-access


# -- Checkpoints: TF-Agents' retry loop and error contract ---------------------


def _evaluator_update(policy, checkpoint, retries=200, pause=0.02):
  """`ckpt_evaluator`'s retry clause, as TF-Agents writes it; returns the errors it retried on."""
  retried = []
  for _ in range(retries):
    try:
      policy.update_from_checkpoint(checkpoint)
      break
    except (tf.errors.OpError, IndexError) as e:
      retried.append(e)
      time.sleep(pause)
  else:
    raise AssertionError(f"never applied; last error: {retried[-1]!r}")
  return retried


@pytest.mark.parametrize("backend", ["tf", "lite"])
def test_a_checkpoint_written_in_slow_chunks_is_retried_then_applied(saved, tmp_path, backend):
  fixture = saved("q_mlp")
  policy = load_saved(saved, "q_mlp", backend)
  reference = _reference(fixture)
  source = scaled_checkpoint(fixture, str(tmp_path / "source"), -1.0)
  target = str(tmp_path / "policy_checkpoint_0003")
  files = sorted(os.listdir(os.path.join(source, "variables")),
                 key=lambda f: f.endswith(".index"))   # data first, index last... then torn
  written = threading.Event()

  def writer():
    os.makedirs(target)
    time.sleep(0.1)                                       # a directory and nothing else
    os.makedirs(os.path.join(target, "variables"))
    index = os.path.join(source, "variables", files[-1])
    data = [os.path.join(source, "variables", f) for f in files[:-1]]
    shutil.copy(index, os.path.join(target, "variables"))   # the index, its data missing
    time.sleep(0.1)
    for path in data:                                     # the data in slow chunks
      with open(path, "rb") as f:
        blob = f.read()
      with open(os.path.join(target, "variables", os.path.basename(path)), "wb") as out:
        for start in range(0, len(blob), 4096):
          out.write(blob[start:start + 4096])
          out.flush()
          time.sleep(0.05)
    for name in os.listdir(source):
      if name != "variables":
        shutil.copy(os.path.join(source, name), target)
    written.set()

  thread = threading.Thread(target=writer)
  thread.start()
  while not os.path.isdir(target):
    time.sleep(0.005)
  retried = _evaluator_update(policy, target)
  thread.join()
  assert written.is_set() or retried
  kinds = {type(e).__name__ for e in retried}
  assert "CheckpointNotFoundError" in kinds, kinds
  for e in retried:
    assert isinstance(e, (FileNotFoundError, ValueError))   # still ours
  reference.update_from_checkpoint(source)
  _assert_acts_like(policy, reference, _steps("q_mlp"), backend)
  assert policy.get_train_step_from_last_restored_checkpoint_path() == 3


def test_update_errors_are_ours_and_tf_agents(saved, tmp_path):
  fixture = saved("q_mlp")
  policy = load_saved(saved, "q_mlp")
  steps = _steps("q_mlp")
  before = _actions(policy, steps)
  missing = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="checkpoint directory not found: .*nowhere") as e:
    policy.update_from_checkpoint(missing)
  assert isinstance(e.value, tf.errors.NotFoundError)
  assert e.value.error_code == tf.errors.NOT_FOUND and "nowhere" in e.value.message
  os.makedirs(tmp_path / "empty")
  with pytest.raises(tf.errors.NotFoundError, match="checkpoint index file not found"):
    policy.update_from_checkpoint(str(tmp_path / "empty"))
  torn = scaled_checkpoint(fixture, str(tmp_path / "torn"), 2.0)
  for name in os.listdir(os.path.join(torn, "variables")):
    if name.startswith("variables.data"):
      path = os.path.join(torn, "variables", name)
      os.truncate(path, os.path.getsize(path) // 2)
  with pytest.raises(ValueError, match="cannot restore checkpoint .*torn") as e:
    policy.update_from_checkpoint(torn)
  assert isinstance(e.value, IndexError)
  np.testing.assert_array_equal(_actions(policy, steps), before)   # kept its weights


def test_train_step_and_metadata_work_for_both_apis(saved):
  policy = load_saved(saved, "q_mlp")
  step = policy.get_train_step()
  assert isinstance(step, np.int64) and step == 42
  assert int(step) + 1 == 43 and "%d" % step == "42"
  tf.Variable(0, dtype=tf.int64).assign(step)   # as eval_job does with the actor's step
  metadata = policy.get_metadata()
  assert metadata["env_name"].numpy() == b"test-env"          # TF-Agents' code: tensors
  assert metadata["version"].numpy() == 3 and isinstance(metadata["version"].numpy(), np.int64)
  assert metadata["version"] + 1 == 4                        # ours: numpy arrays
  assert isinstance(metadata["version"], np.ndarray) and metadata["version"].shape == ()


@pytest.mark.parametrize("backend", ["lite", "auto"])
def test_weights_tf_refuses_fail_every_call_until_others_arrive(tmp_path, backend):
  """Pushed weights that must be converted are validated; ones TF cannot run (its
  check_numerics fails) make each call raise, naming why, until good weights come."""
  path = str(tmp_path / "checked")
  policy_zoo.save(policy_zoo.SoftplusWeightsPolicy(checked=True), path)
  policy = SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True, backend=backend)
  assert "converted" in policy.lite_weights
  step = ts.TimeStep(np.int32(1), np.float32(0), np.float32(1), np.ones(3, np.float32))
  held = policy.variables()
  good = held[0].numpy()
  bad = good.copy()
  bad[:, 1] = np.inf
  held[0].assign(bad)
  for _ in range(2):
    with pytest.raises(ValueError, match=r"^cannot follow the weights pushed into variables\(\): "
                                         r"scores : Tensor had NaN values"):
      policy.action(step)
  push(held, [good * 2])
  reference = py_tf_eager_policy.SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True)
  _set(reference, [good * 2])
  np.testing.assert_array_equal(_actions(policy, [step]), _actions(reference, [step]))
  assert policy.backend == "lite"


def test_a_push_that_fails_part_way_is_closed_by_the_next(saved):
  """A tf.function that fails after some of its writes leaves its push open; the next
  complete push closes it and is followed."""
  fixture = saved("q_mlp")
  policy = load_saved(saved, "q_mlp", "lite")
  reference = _reference(fixture)
  held = policy.variables()
  original = [v.numpy() for v in held]

  @tf.function
  def failing(variables, values):
    variables[0].assign(values[0])
    tf.debugging.assert_equal(1, 2, message="the learner went away")
    variables[1].assign(values[1])

  with pytest.raises(tf.errors.InvalidArgumentError, match="the learner went away"):
    failing(held, _flipped(original, 3.0))
  steps = _steps("q_mlp")
  _actions(policy, steps)   # acts (on the last complete weights), never on a half push
  push(held, _flipped(original))
  _set(reference, _flipped(original))
  _assert_acts_like(policy, reference, steps, "lite")


def test_a_push_lite_cannot_serve_moves_auto_to_tf_with_a_logged_reason(caplog):
  """int8 weights are converted and validated on every push. Weights whose Q-values are
  near-tied (the last layer's columns almost equal) lose TF's greedy action at int8, so the
  push is refused on LiteRT; on "auto" the policy moves to TF, says why once, and acts on the
  pushed weights exactly as TF-Agents' class does."""
  from tools.cli import policy_cli  # pylint: disable=import-outside-toplevel
  path = policy_cli.DEFAULT_POLICY   # trained: its greedy actions agree at int8
  policy = SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True, backend="auto",
                                     precision="int8")
  assert policy.backend == "lite" and policy.lite_validation.precision == "int8"
  reference = py_tf_eager_policy.SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True)
  held = policy.variables()
  tied = [v.numpy() for v in held]
  noise = np.random.default_rng(0).normal(size=tied[-2].shape[0]).astype(np.float32)
  for column in range(1, tied[-2].shape[1]):
    tied[-2][:, column] = tied[-2][:, 0] + 1e-6 * noise * column
    tied[-1][column] = tied[-1][0]
  steps = _steps("q_mlp", 64)
  with caplog.at_level("WARNING", logger="policy_runtime"):
    push(held, tied)
    _set(reference, tied)
    np.testing.assert_array_equal(_actions(policy, steps), _actions(reference, steps))
  assert policy.backend == "tf"
  assert "agree" in policy.backend_reason, policy.backend_reason
  warnings = [r.getMessage() for r in caplog.records if "these weights run on TF" in r.getMessage()]
  assert len(warnings) == 1, warnings
  push(held, _flipped(tied))   # later pushes follow on TF
  _set(reference, _flipped(tied))
  np.testing.assert_array_equal(_actions(policy, steps), _actions(reference, steps))
