"""backend="lite": parity with the TF path, threads, hot swap, fallback, the conversion cache."""

import logging
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import act_during_swaps, run_threads, scaled_checkpoint, spec_inputs
from policy_runtime.policies import SavedModelPyTFEagerPolicy
from policy_runtime.policies.engines import lite


def _load(fixture, **kwargs):
  return SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True, **kwargs)


def _inputs(policy, count, batch=None, seed=0):
  return spec_inputs(policy, count, () if batch is None else (batch,), seed)


def _assert_close(got, want):
  for g, w in zip(tf.nest.flatten(got), tf.nest.flatten(want)):
    g, w = np.asarray(g), np.asarray(w)
    assert g.dtype == w.dtype and g.shape == w.shape
    if np.issubdtype(w.dtype, np.floating):
      np.testing.assert_allclose(g, w, rtol=lite.FLOAT_RTOL, atol=lite.FLOAT_ATOL)
    else:
      np.testing.assert_array_equal(g, w)


# A fixed-batch export takes batches only (batch_time_steps=True is a load error).
@pytest.mark.parametrize("name,batch_time_steps", [
    (name, mode) for name in ("q_mlp", "q_8_leaves", "lstm_actor") for mode in (True, False)
] + [("q_fixed_batch", False)])
def test_parity_with_the_tf_path(saved, name, batch_time_steps):
  fixture = saved(name)
  on_tf = _load(fixture, batch_time_steps=batch_time_steps)
  on_lite = _load(fixture, batch_time_steps=batch_time_steps, backend="lite")
  assert on_lite.backend == "lite" and on_tf.backend == "tf"
  batch = None if batch_time_steps else (fixture.batch_size or 5)
  for time_step, state in _inputs(on_tf, 40, batch):
    _assert_close(on_lite.action(time_step, state), on_tf.action(time_step, state))


def test_lstm_state_goes_round_the_loop_as_on_tf(saved):
  fixture = saved("lstm_actor")
  on_tf, on_lite = _load(fixture), _load(fixture, backend="lite")
  state_tf, state_lite = on_tf.get_initial_state(), on_lite.get_initial_state()
  for time_step, _ in _inputs(on_tf, 20):
    out_tf, out_lite = on_tf.action(time_step, state_tf), on_lite.action(time_step, state_lite)
    _assert_close(out_lite, out_tf)
    state_tf, state_lite = out_tf.state, out_lite.state
  assert np.abs(np.asarray(state_tf[0])).sum() > 0


def test_stochastic_policy_samples_within_bounds_and_rejects_seeds(saved):
  fixture = saved("ppo_collect")
  on_tf, on_lite = _load(fixture), _load(fixture, backend="lite")
  spec = on_lite.action_spec
  for time_step, state in _inputs(on_tf, 20):
    got, want = on_lite.action(time_step, state), on_tf.action(time_step, state)
    _assert_close(got.info, want.info)      # the distribution's parameters are deterministic
    assert got.action.shape == want.action.shape and got.action.dtype == want.action.dtype
    assert np.all(got.action >= spec.minimum) and np.all(got.action <= spec.maximum)
  time_step, state = _inputs(on_tf, 1)[0]
  with pytest.raises(ValueError, match="seeds were fixed when its graph was built"):
    on_lite.action(time_step, state, seed=1)


def test_outputs_are_owned_and_not_overwritten_by_later_calls(saved):
  policy = _load(saved("lstm_actor"), backend="lite")
  (first, state), (second, _) = _inputs(policy, 2)
  out = policy.action(first, state)
  kept = np.array(out.action, copy=True)
  assert out.action.flags.writeable and out.action.flags.owndata
  policy.action(second, state)
  np.testing.assert_array_equal(out.action, kept)


def test_16_threads_get_what_serial_calls_get(saved):
  policy = _load(saved("q_8_leaves"), backend="lite")
  cases = _inputs(policy, 64)
  expected = [policy.action(t, s).action for t, s in cases]
  results = {}

  def act(i):
    for k in range(200):
      j = (i * 7 + k) % len(cases)
      results.setdefault(i, []).append((j, policy.action(*cases[j]).action))

  assert run_threads(16, act) == []
  for pairs in results.values():
    for j, action in pairs:
      np.testing.assert_array_equal(action, expected[j])


def test_hot_swap_under_load_never_mixes_weights(saved, tmp_path):
  fixture = saved("q_mlp")
  policy = _load(fixture, backend="lite")
  a = scaled_checkpoint(fixture, str(tmp_path / "a_0001"), 1.0)
  b = scaled_checkpoint(fixture, str(tmp_path / "b_0002"), -1.0)
  cases = _inputs(policy, 16, batch=None, seed=3)
  references = []
  for checkpoint in (a, b):
    reference = _load(fixture)
    reference.update_from_checkpoint(checkpoint)
    references.append([reference.action(t, s).action for t, s in cases])
  assert any(x != y for x, y in zip(*references)), "the two weights must act differently"
  bad = []

  def act(i):
    j = i % len(cases)
    got = policy.action(*cases[j]).action
    if got != references[0][j] and got != references[1][j]:
      bad.append((j, got))

  act_during_swaps(policy, [a, b], swaps=100, threads=8, act=act)
  assert not bad
  assert policy.backend == "lite"
  assert [policy.action(t, s).action for t, s in cases] == references[1]


def test_failed_update_leaves_the_lite_policy_as_it_was(saved, tmp_path):
  fixture = saved("q_mlp")
  policy = _load(fixture, backend="lite")
  time_step, state = _inputs(policy, 1)[0]
  before = policy.action(time_step, state).action
  broken = scaled_checkpoint(fixture, str(tmp_path / "broken_0003"), 2.0)
  index = os.path.join(broken, "variables", "variables.index")
  with open(index, "r+b") as f:
    f.truncate(10)
  with pytest.raises(ValueError, match="cannot restore checkpoint"):
    policy.update_from_checkpoint(broken)
  assert policy.action(time_step, state).action == before and policy.backend == "lite"


def test_conversion_failure_names_the_blocking_op(saved):
  with pytest.raises(ValueError, match=r"^.*cumprod: cannot convert 'action' to LiteRT with "
                                       r"builtin ops only; no LiteRT builtin for: Cumprod$"):
    _load(saved("cumprod"), backend="lite")


@pytest.mark.parametrize("batch_time_steps", [True, False])
def test_random_policy_samples_uniformly_within_bounds(saved, batch_time_steps):
  # RandomUniformInt has no LiteRT builtin; the converter gets builtin ops that sample the same.
  policy = _load(saved("random"), backend="lite", batch_time_steps=batch_time_steps)
  assert policy.backend == "lite"
  spec = policy.action_spec
  cases = _inputs(policy, 500) if batch_time_steps else _inputs(policy, 1, batch=500)
  actions = np.concatenate([np.atleast_2d(policy.action(t, s).action) for t, s in cases])
  assert actions.shape == (500, 3) and actions.dtype == spec.dtype
  counts = np.bincount((actions - spec.minimum).ravel(), minlength=spec.maximum - spec.minimum + 1)
  assert len(counts) == spec.maximum - spec.minimum + 1    # nothing above the maximum
  assert counts.min() > 100                                # ~187 each of 8 values


def test_auto_falls_back_to_tf_with_one_warning(saved, caplog):
  with caplog.at_level(logging.WARNING, logger="policy_runtime"):
    policy = _load(saved("cumprod"), backend="auto")
  assert policy.backend == "tf"
  warnings = [r for r in caplog.records if r.name == "policy_runtime"]
  assert len(warnings) == 1 and "Cumprod" in warnings[0].getMessage()
  time_step, state = _inputs(policy, 1)[0]
  assert policy.action(time_step, state).action.shape == ()
  assert _load(saved("q_mlp"), backend="auto").backend == "lite"


def test_unknown_backend_is_a_clear_error(saved):
  with pytest.raises(ValueError, match=r"^backend: expected one of 'tf', 'lite', 'auto', got 'gpu'"):
    _load(saved("q_mlp"), backend="gpu")


def _cache_files(cache_dir):
  """The cache's entries: one model has two, its probe conversions (lite_weights)."""
  directory = os.path.join(cache_dir, "lite")
  files = sorted(f for f in os.listdir(directory) if f.endswith(".tflite"))
  assert len(files) == 2
  return [os.path.join(directory, f) for f in files]


def test_conversion_cache_hit_miss_and_corrupt_entry(saved, tmp_path):
  fixture = saved("q_8_leaves")
  cache_dir = str(tmp_path / "cache")
  first = _load(fixture, backend="lite", lite_cache_dir=cache_dir)
  assert first._engine.last_conversion == "converted"  # pylint: disable=protected-access
  second = _load(fixture, backend="lite", lite_cache_dir=cache_dir)
  assert second._engine.last_conversion == "cache hit"  # pylint: disable=protected-access
  assert second._engine.conversions == 0  # pylint: disable=protected-access
  for entry in _cache_files(cache_dir):
    data = bytearray(open(entry, "rb").read())
    data[-100] ^= 0xFF
    with open(entry, "wb") as f:
      f.write(bytes(data))
    third = _load(fixture, backend="lite", lite_cache_dir=cache_dir)
    assert third._engine.last_conversion == "converted"  # pylint: disable=protected-access
    assert third._engine.conversions == 1  # pylint: disable=protected-access
    time_step, state = _inputs(first, 1)[0]
    assert third.action(time_step, state).action == first.action(time_step, state).action
  assert _load(fixture, backend="lite", lite_cache_dir=cache_dir)._engine.last_conversion == \
      "cache hit"  # pylint: disable=protected-access


def test_foreign_cache_entry_is_ignored(saved, tmp_path):
  cache_dir = str(tmp_path / "cache")
  _load(saved("q_mlp"), backend="lite", lite_cache_dir=cache_dir)
  other_dir = str(tmp_path / "other")
  _load(saved("q_8_leaves"), backend="lite", lite_cache_dir=other_dir)
  for mine, other in zip(_cache_files(cache_dir), _cache_files(other_dir)):
    with open(other, "rb") as f:
      foreign = f.read()
    with open(mine, "wb") as f:
      f.write(foreign)   # another model's entry under this model's key
  policy = _load(saved("q_mlp"), backend="lite", lite_cache_dir=cache_dir)
  assert policy._engine.last_conversion == "converted"  # pylint: disable=protected-access


def test_cache_directory_from_the_environment(saved, tmp_path, monkeypatch):
  monkeypatch.setenv(lite.CACHE_ENV, str(tmp_path / "from_env"))
  _load(saved("q_mlp"), backend="lite")
  assert _cache_files(str(tmp_path / "from_env"))
