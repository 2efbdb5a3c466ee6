"""The native marshaler: flatten order, zero-copy, output views, and validation."""

import collections.abc
import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest
import tensorflow as tf
from tf_agents.trajectories import policy_step
from tf_agents.trajectories import time_step as ts

from policy_runtime.native import marshal
from policy_runtime.policies import PyTFEagerPolicyBase
from policy_runtime.policies.saved_model import marshaling_plan
import spec_strategies

def _values_for(spec_nest, outer, rng):
  def make(spec):
    shape = tuple(outer) + tuple(spec.shape[1:])
    return (rng.standard_normal(shape) * 10).astype(spec.dtype.as_numpy_dtype)
  return tf.nest.map_structure(make, spec_nest)


def _plan(time_step_spec, state_spec, batch_time_steps, fixed=None):
  output = policy_step.PolicyStep(action=tf.TensorSpec([None], tf.float32), state=(), info=())
  plan = marshaling_plan.build_native_plan(time_step_spec, state_spec, output, 1,
                                              batch_time_steps, fixed)
  return plan


@hypothesis.settings(max_examples=150, deadline=None, database=None, derandomize=True)
@hypothesis.given(ts_spec=spec_strategies.spec_nests(), state_spec=spec_strategies.spec_nests(6), seed=st.integers(0, 2**16),
                  batch_time_steps=st.booleans())
def test_flatten_order_and_values_equal_tf_nest_flatten(ts_spec, state_spec, seed, batch_time_steps):
  rng = np.random.default_rng(seed)
  plan = _plan(ts_spec, state_spec, batch_time_steps)
  time_step = _values_for(ts_spec, () if batch_time_steps else (2,), rng)
  state = _values_for(state_spec, (1,) if batch_time_steps else (2,), rng)
  flat = plan.flatten(time_step, state)
  expected = tf.nest.flatten((time_step, state))
  num_ts = len(tf.nest.flatten(time_step))
  assert len(flat) == len(expected)
  for i, (tensor, array) in enumerate(zip(flat, expected)):
    if batch_time_steps and i < num_ts:
      array = array[None]
    assert tensor.dtype.as_numpy_dtype == array.dtype
    np.testing.assert_array_equal(tensor.numpy(), array)


def aligned(shape, dtype, offset=0):
  """An array whose data starts `offset` bytes past a 64-byte boundary."""
  dtype = np.dtype(dtype)
  nbytes = int(np.prod(shape)) * dtype.itemsize
  raw = np.empty(nbytes + 2 * marshal.ALIGNMENT, np.uint8)
  start = (-raw.ctypes.data) % marshal.ALIGNMENT + offset
  return raw[start:start + nbytes].view(dtype).reshape(shape)


def _address(tensor):
  return np.asarray(tensor).ctypes.data


_SIMPLE_TS = ts.TimeStep(step_type=tf.TensorSpec([None], tf.int32),
                         reward=tf.TensorSpec([None], tf.float32),
                         discount=tf.TensorSpec([None], tf.float32),
                         observation={"img": tf.TensorSpec([None, 4, 4, 1], tf.float32),
                                      "pos": tf.TensorSpec([None, 3], tf.float64)})
_STATE = [tf.TensorSpec([None, 8], tf.float32), tf.TensorSpec([None, 8], tf.float32)]


def _good_step(batch=None):
  outer = () if batch is None else (batch,)
  return ts.TimeStep(step_type=np.zeros(outer, np.int32), reward=np.zeros(outer, np.float32),
                     discount=np.ones(outer, np.float32),
                     observation={"img": np.ones(outer + (4, 4, 1), np.float32),
                                  "pos": np.zeros(outer + (3,), np.float64)})


def _good_state(batch=1):
  return [np.zeros((batch, 8), np.float32), np.zeros((batch, 8), np.float32)]


def test_aligned_contiguous_leaves_are_not_copied():
  plan = _plan(_SIMPLE_TS, _STATE, batch_time_steps=True)
  step = _good_step()._replace(observation={"img": aligned((4, 4, 1), np.float32),
                                            "pos": aligned((3,), np.float64)})
  step.observation["img"][:] = 7
  state = [aligned((1, 8), np.float32), aligned((1, 8), np.float32)]
  flat = plan.flatten(step, state)
  assert _address(flat[3]) == step.observation["img"].ctypes.data
  assert flat[3].shape == (1, 4, 4, 1)
  assert _address(flat[4]) == step.observation["pos"].ctypes.data
  assert _address(flat[5]) == state[0].ctypes.data
  np.testing.assert_array_equal(flat[3].numpy()[0], step.observation["img"])


_BIG_TS = _SIMPLE_TS._replace(observation={"img": tf.TensorSpec([None, 84, 84, 4], tf.uint8),
                                            "pos": tf.TensorSpec([None, 3], tf.float64)})


def test_in_calls_large_aligned_leaves_are_lent_and_small_ones_staged():
  plan = _plan(_BIG_TS, _STATE, batch_time_steps=True)
  img = aligned((84, 84, 4), np.uint8)
  assert img.nbytes >= marshal.ZERO_COPY_MIN_BYTES
  img[:] = 3
  step = _good_step()._replace(observation={"img": img, "pos": aligned((3,), np.float64)})
  first = plan.flatten(step, _good_state(), staging=True)
  assert _address(first[3]) == img.ctypes.data                     # lent as is
  assert _address(first[4]) != step.observation["pos"].ctypes.data  # staged (small)
  step.observation["pos"][:] = [1, 2, 3]
  second = plan.flatten(step, _good_state(), staging=True)
  assert second[4] is first[4]                                     # the same staging tensor
  np.testing.assert_array_equal(second[4].numpy(), [[1, 2, 3]])


def test_calls_leave_no_lent_buffers_behind():
  policy = _identity_policy(True)
  step = ts.TimeStep(np.int32(0), np.float32(0), np.float32(1), np.ones(3, np.float32))
  policy.action(step)
  baseline = marshal.live_exported_leaves()   # the pooled staging tensors
  for i in range(500):
    policy.action(step._replace(observation=np.full(3, i, np.float32)))
  assert marshal.live_exported_leaves() == baseline


@pytest.mark.parametrize("make", [
    lambda: aligned((4, 4, 1), np.float32, offset=4),                       # unaligned
    lambda: np.asfortranarray(aligned((4, 4, 1), np.float32)),             # not C order
    lambda: aligned((4, 8, 1), np.float32)[:, ::2],                        # strided
    lambda: np.frombuffer(bytes(64), np.float32).reshape(4, 4, 1),         # read-only
])
def test_other_leaves_are_copied_once_into_aligned_buffers(make):
  plan = _plan(_SIMPLE_TS, _STATE, batch_time_steps=True)
  img = make()
  step = _good_step()._replace(observation={"img": img, "pos": np.zeros(3)})
  tensor = plan.flatten(step, _good_state())[3]
  assert _address(tensor) != img.__array_interface__["data"][0]
  assert _address(tensor) % marshal.ALIGNMENT == 0
  np.testing.assert_array_equal(tensor.numpy()[0], img)


class _IdentityPolicy:
  """A live TF policy whose action is its observation (the graph forwards the buffer)."""

  time_step_spec = ts.time_step_spec(tf.TensorSpec([3], tf.float32))
  policy_state_spec = ()

  def action(self, time_step, policy_state=()):
    return policy_step.PolicyStep(tf.identity(time_step.observation), (), ())


def _identity_policy(batch_time_steps):
  from tf_agents.specs import tensor_spec
  spec = _IdentityPolicy.time_step_spec
  return PyTFEagerPolicyBase(_IdentityPolicy(), tensor_spec.to_nest_array_spec(spec),
                             tensor_spec.to_nest_array_spec(spec.observation), (), (),
                             batch_time_steps=batch_time_steps)


@pytest.mark.parametrize("batch_time_steps", [True, False])
def test_outputs_never_alias_inputs(batch_time_steps):
  policy = _identity_policy(batch_time_steps)
  outer = () if batch_time_steps else (1,)
  obs = aligned(outer + (3,), np.float32)
  obs[:] = [1, 2, 3]
  step = ts.TimeStep(np.zeros(outer, np.int32), np.zeros(outer, np.float32),
                     np.ones(outer, np.float32), obs)
  action = policy.action(step).action
  np.testing.assert_array_equal(action, obs)
  obs[:] = 0
  np.testing.assert_array_equal(action, np.reshape([1, 2, 3], outer + (3,)))
  policy.action(step)  # reuses the staging buffers the first call copied into
  np.testing.assert_array_equal(action, np.reshape([1, 2, 3], outer + (3,)))


def test_outputs_are_arrays_the_caller_owns():
  policy = _identity_policy(True)
  step = ts.TimeStep(np.int32(0), np.float32(0), np.float32(1), np.ones(3, np.float32))
  action = policy.action(step).action
  assert action.shape == (3,) and action.flags.owndata and action.flags.writeable
  assert action.base is None


# -- Validation details (the bad-input table runs through the policy in sturdiness_test). --

def test_inconsistent_batch_names_both_fields():
  plan = _plan(_SIMPLE_TS, _STATE, batch_time_steps=False)
  step = _good_step(4)._replace(reward=np.zeros(3, np.float32))
  with pytest.raises(ValueError, match=r"^time_step\.reward: expected float32\[4\], got float32\[3\] "
                                       r"\(batch size differs from time_step\.step_type\)"):
    plan.flatten(step, _good_state(4))


def test_python_numbers_and_lists_follow_same_kind_casting():
  plan = _plan(_SIMPLE_TS, _STATE, batch_time_steps=True)
  step = _good_step()._replace(step_type=1, reward=1, discount=0.5,
                               observation={"img": np.ones((4, 4, 1), np.float32),
                                            "pos": [1, 2.5, 3]})
  flat = plan.flatten(step, _good_state())
  assert flat[0].numpy().tolist() == [1] and flat[1].dtype == tf.float32
  np.testing.assert_array_equal(flat[4].numpy(), [[1, 2.5, 3]])


def test_mappings_and_sequence_wrappers_are_accepted():
  plan = _plan(_SIMPLE_TS, _STATE, batch_time_steps=True)
  from tensorflow.python.trackable import data_structures
  step = _good_step()
  step = step._replace(observation=data_structures.wrap_or_unwrap(dict(step.observation)))
  state = data_structures.wrap_or_unwrap(_good_state())
  assert len(plan.flatten(step, state)) == 7


class _ScaledDict(dict):
  """A dict subclass whose __getitem__ differs from its storage (TF-Agents' class reads
  __getitem__; tf.nest.flatten alone would read the storage)."""

  def __getitem__(self, key):
    return super().__getitem__(key) * 2


class _BrokenMapping(collections.abc.Mapping):
  """A Mapping whose __getitem__ raises for one key."""

  def __init__(self, data, broken):
    self._data, self._broken = data, broken

  def __getitem__(self, key):
    if key == self._broken:
      raise KeyError(f"{key} is gone")
    return self._data[key]

  def __iter__(self):
    return iter(self._data)

  def __len__(self):
    return len(self._data)


def test_dict_subclasses_are_read_through_getitem_like_tf_agents():
  plan = _plan(_SIMPLE_TS, _STATE, batch_time_steps=True)
  step = _good_step()._replace(observation=_ScaledDict(_good_step().observation))
  flat = plan.flatten(step, _good_state())
  read = _good_step()._replace(observation={k: step.observation[k] for k in step.observation})
  expected = tf.nest.flatten((read, _good_state()))
  np.testing.assert_array_equal(flat[3].numpy()[0], expected[3])
  assert flat[3].numpy().max() == 2.0


@pytest.mark.parametrize("broken", ["img", "pos"])
def test_a_mapping_that_raises_when_read_is_a_value_error_naming_the_field(broken):
  plan = _plan(_SIMPLE_TS, _STATE, batch_time_steps=True)
  step = _good_step()._replace(observation=_BrokenMapping(_good_step().observation, broken))
  with pytest.raises(ValueError, match=rf"^time_step\.observation\['{broken}'\]: the mapping "
                                       rf"raised when read: KeyError"):
    plan.flatten(step, _good_state())
  assert len(plan.flatten(_good_step(), _good_state())) == 7


def test_an_interrupt_inside_a_mapping_is_not_turned_into_an_error():
  class Interrupting(_BrokenMapping):
    def __getitem__(self, key):
      raise KeyboardInterrupt

  plan = _plan(_SIMPLE_TS, _STATE, batch_time_steps=True)
  step = _good_step()._replace(observation=Interrupting(_good_step().observation, None))
  with pytest.raises(KeyboardInterrupt):
    plan.flatten(step, _good_state())


def test_deep_nesting_and_huge_declared_shapes_raise_cleanly():
  plan = _plan(_SIMPLE_TS, _STATE, batch_time_steps=True)
  deep = 1.0
  for _ in range(10000):
    deep = [deep]
  with pytest.raises((ValueError, TypeError)):
    plan.flatten(_good_step()._replace(reward=deep), _good_state())
  huge = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), shape=(2**40, 4, 4, 1),
                                         strides=(0, 0, 0, 0))
  with pytest.raises(ValueError, match="got float32"):
    plan.flatten(_good_step()._replace(observation={"img": huge, "pos": np.zeros(3)}),
                 _good_state())


def test_huge_leaf_with_a_valid_shape_is_an_out_of_memory_value_error():
  plan = _plan(_SIMPLE_TS._replace(observation=tf.TensorSpec([None, 4], tf.float32)), (),
               batch_time_steps=False)
  batch = 2**46  # 2**50 bytes: more than any address space
  huge = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), shape=(batch, 4), strides=(0, 0))
  step = ts.TimeStep(*(np.lib.stride_tricks.as_strided(np.zeros(1, d), shape=(batch,), strides=(0,))
                       for d in (np.int32, np.float32, np.float32)), huge)
  for staging in (False, True):
    with pytest.raises(ValueError, match=r"^time_step\.\w+: out of memory copying this leaf"):
      plan.flatten(step, (), staging=staging)


_EMPTY_PAIR = {"a": tf.TensorSpec([None, 0], tf.float32), "b": tf.TensorSpec([None, 0], tf.float32)}


def test_batch_sizes_beyond_int32_are_neither_truncated_nor_mixed_up():
  plan = _plan(_EMPTY_PAIR, (), batch_time_steps=False)
  big = 2**32 + 3
  with pytest.raises(ValueError, match=r"^time_step\['b'\]: expected float32\[4294967299,0\], "
                                       r"got float32\[3,0\] \(batch size differs"):
    plan.flatten({"a": np.zeros((big, 0), np.float32), "b": np.zeros((3, 0), np.float32)}, (),
                 staging=True)
  flat = plan.flatten({"a": np.zeros((big, 0), np.float32), "b": np.zeros((big, 0), np.float32)},
                      (), staging=True)
  assert [tuple(t.shape) for t in flat] == [(big, 0)] * 2
  flat = plan.flatten({"a": np.zeros((3, 0), np.float32), "b": np.zeros((3, 0), np.float32)}, (),
                      staging=True)
  assert [tuple(t.shape) for t in flat] == [(3, 0)] * 2


@pytest.mark.parametrize("field,value,pattern", [
    ("step_type", 2**33 + 1, r"^time_step\.step_type: expected int32\[\], got 8589934593, which does not fit int32$"),
    ("step_type", -2**31 - 1, r"^time_step\.step_type: expected int32\[\], got -2147483649, which does not fit int32$"),
    ("reward", 1e300, r"^time_step\.reward: expected float32\[\], got 1e\+300, which does not fit float32$"),
    ("observation", [1.0, 2.0, 3e39], r"^time_step\.observation: expected float32\[3\], got 3e\+39, which does not fit float32$"),
])
def test_python_numbers_that_do_not_fit_the_dtype_are_errors(field, value, pattern):
  policy = _identity_policy(True)
  step = ts.TimeStep(np.int32(0), np.float32(0), np.float32(1), np.ones(3, np.float32))
  with pytest.raises(ValueError, match=pattern):
    policy.action(step._replace(**{field: value}))


def test_python_numbers_that_fit_are_converted_exactly():
  policy = _identity_policy(True)
  step = ts.TimeStep(2**31 - 1, -1e30, float("inf"), [float("nan"), -3, 2**24])
  np.testing.assert_array_equal(policy.action(step).action, np.array([np.nan, -3, 2**24], np.float32))


def test_eager_tensor_leaves_are_accepted_like_arrays():
  policy = _identity_policy(False)
  obs = np.arange(6, dtype=np.float32).reshape(2, 3)
  step = ts.TimeStep(tf.constant([0, 1]), tf.zeros(2), tf.ones(2), tf.constant(obs))
  np.testing.assert_array_equal(policy.action(step).action, obs)
  with pytest.raises(TypeError, match=r"^time_step\.observation: expected float32\[2,3\], got float64\[2,3\]$"):
    policy.action(step._replace(observation=tf.constant(obs, tf.float64)))


class _BoolIdentityPolicy:
  """A live TF policy whose action is its bool observation (forwarded buffer)."""

  time_step_spec = ts.time_step_spec(tf.TensorSpec([64], tf.bool))
  policy_state_spec = ()

  def action(self, time_step, policy_state=()):
    return policy_step.PolicyStep(tf.identity(time_step.observation), (), ())


def test_fallback_path_outputs_never_share_the_callers_buffer():
  from tf_agents.specs import tensor_spec
  spec = _BoolIdentityPolicy.time_step_spec
  policy = PyTFEagerPolicyBase(_BoolIdentityPolicy(), tensor_spec.to_nest_array_spec(spec),
                               tensor_spec.to_nest_array_spec(spec.observation), (), ())
  shared = 0
  for i in range(400):
    obs = np.zeros(64, bool)
    obs[i % 64] = True
    action = policy.action(ts.TimeStep(np.int32(0), np.float32(0), np.float32(1), obs)).action
    before = action.copy()
    obs[:] = ~obs
    shared += not np.array_equal(action, before)
  assert shared == 0


def test_no_buffers_or_references_are_leaked_on_any_path():
  import sys
  plan = _plan(_BIG_TS, _STATE, batch_time_steps=True)
  img = aligned((84, 84, 4), np.uint8)                 # lent zero-copy
  pos = aligned((3,), np.float64)                      # staged
  step = _good_step()._replace(observation={"img": img, "pos": pos})
  plan.flatten(step, _good_state(), staging=True)
  baseline = marshal.live_exported_leaves()
  refs = sys.getrefcount(img), sys.getrefcount(pos)
  for i in range(200):
    plan.flatten(step, _good_state(), staging=True)    # zero-copy + staged
    plan.flatten(step, _good_state(), staging=False)   # zero-copy + copies
    with pytest.raises(TypeError):                     # fails after some leaves were converted
      plan.flatten(step, [_good_state()[0], np.zeros((1, 8), np.int64)], staging=bool(i % 2))
  assert marshal.live_exported_leaves() == baseline
  assert (sys.getrefcount(img), sys.getrefcount(pos)) == refs

  bool_policy = PyTFEagerPolicyBase(_BoolIdentityPolicy(), *_bool_specs())
  obs = np.zeros(64, bool)
  bool_policy.action(ts.TimeStep(np.int32(0), np.float32(0), np.float32(1), obs))
  baseline, ref = marshal.live_exported_leaves(), sys.getrefcount(obs)
  for _ in range(200):
    bool_policy.action(ts.TimeStep(np.int32(0), np.float32(0), np.float32(1), obs))
    with pytest.raises(ValueError):
      bool_policy.action(ts.TimeStep(np.int32(0), np.float32(0), np.float32(1), obs[:3]))
  assert marshal.live_exported_leaves() == baseline and sys.getrefcount(obs) == ref


def _bool_specs():
  from tf_agents.specs import tensor_spec
  spec = _BoolIdentityPolicy.time_step_spec
  return tensor_spec.to_nest_array_spec(spec), tensor_spec.to_nest_array_spec(spec.observation), (), ()
