"""Fuzzing the native marshaler: generated nests, dtypes, shapes and junk against compiled plans.

Every case must either succeed with the right tensors or raise ValueError /
TypeError; anything else (another exception, a crash) fails. FUZZ_EXAMPLES sets
the number of cases (`//tests:marshal_fuzz_long` runs 100,000).
"""

import collections
import os

import hypothesis
from hypothesis import strategies as st
import numpy as np
import tensorflow as tf
from tensorflow.python.util import nest

from policy_runtime.policies.saved_model import marshaling_plan
from tf_agents.trajectories import policy_step

import spec_strategies
from spec_strategies import Pair

_SETTINGS = spec_strategies.fuzz_settings(300)
Other = collections.namedtuple("Other", ["left", "right"])
_SPEC_NESTS = spec_strategies.spec_nests(max_leaves=8, min_dim=0)

_JUNK = [None, "text", b"bytes", object(), 3 + 4j, {"k": 1}, [], [[1], [2, 3]], float("nan"),
         np.array(["a", "b"]), np.array([object(), None], dtype=object), np.float64(1.5),
         np.datetime64("2020-01-01"), slice(1, 2), Ellipsis]


_INVALID_KINDS = ["wrong_dtype", "wrong_shape", "extra_dim", "missing_dim", "list", "junk",
                  "huge", "huge_valid_shape", "zero_size"]
_ALL_KINDS = ("good", "good") + spec_strategies.VALID_LAYOUTS + tuple(_INVALID_KINDS)


def _leaf_value(draw, spec, outer, kinds=_ALL_KINDS):
  shape = tuple(outer) + tuple(spec.shape[1:])
  dtype = spec.dtype.as_numpy_dtype
  good = (np.arange(int(np.prod(shape))) % 7).astype(dtype).reshape(shape)
  kind = draw(st.sampled_from(kinds))
  if kind in spec_strategies.VALID_LAYOUTS:
    return spec_strategies.with_layout(good, kind)
  if kind == "wrong_dtype":
    return good.astype(draw(st.sampled_from([np.float32, np.int64, np.uint16, np.complex64, bool])))
  if kind == "wrong_shape":
    return np.zeros(shape + (2,), dtype)
  if kind == "extra_dim":
    return good[None]
  if kind == "missing_dim":
    return good.reshape(-1)[0] if good.size else np.zeros((), dtype)
  if kind == "list":
    return [good.tolist(), good.tolist()]
  if kind == "huge":
    return np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape=(2**40,) + shape[1:],
                                           strides=(0,) * (len(shape[1:]) + 1))
  if kind == "huge_valid_shape":  # the right shape, far too large to copy
    if not outer:
      return good
    return np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape=(2**44,) + shape[1:],
                                           strides=(0,) * len(shape))
  if kind == "zero_size":
    return np.zeros((0,) + shape[1:], dtype)
  return draw(st.sampled_from(_JUNK))


def _valid_value(draw, spec, outer):
  """A value for `spec` in any form the marshaler must accept."""
  if isinstance(spec, tf.TensorSpec):
    return _leaf_value(draw, spec, outer, spec_strategies.VALID_LAYOUTS)
  if isinstance(spec, dict):
    return {k: _valid_value(draw, v, outer) for k, v in spec.items()}
  children = [_valid_value(draw, v, outer) for v in spec]
  if isinstance(spec, Pair):
    return Pair(*children)
  return type(spec)(children)


def _value(draw, spec, outer):
  """A value for `spec`, sometimes with a broken structure or leaf."""
  if isinstance(spec, tf.TensorSpec):
    return _leaf_value(draw, spec, outer)
  mutation = draw(st.sampled_from(["none"] * 6 + ["junk", "wrong_container", "drop", "add"]))
  if mutation == "junk":
    return draw(st.sampled_from(_JUNK))
  if isinstance(spec, dict):
    value = {k: _value(draw, v, outer) for k, v in spec.items()}
    if mutation == "drop":
      value.pop(next(iter(value)))
    elif mutation == "add":
      value["~extra"] = np.zeros(1)
    elif mutation == "wrong_container":
      return list(value.values())
    return value
  children = [_value(draw, v, outer) for v in spec]
  if isinstance(spec, Pair):
    if mutation == "wrong_container":
      return Other(*children) if draw(st.booleans()) else tuple(children)
    if mutation == "drop":
      return tuple(children[:1])
    return Pair(*children)
  if mutation == "drop":
    children = children[:-1]
  elif mutation == "add":
    children = children + [np.zeros(1)]
  elif mutation == "wrong_container":
    return {str(i): c for i, c in enumerate(children)}
  return type(spec)(children) if isinstance(spec, (list, tuple)) else children


def _expected(spec, value, add_batch):
  """What a successful flatten must produce for one leaf."""
  array = np.asarray(value, dtype=spec.dtype.as_numpy_dtype)
  return array[None] if add_batch else array


@st.composite
def _cases(draw):
  ts_spec = draw(_SPEC_NESTS)
  state_spec = draw(st.one_of(st.just(()), _SPEC_NESTS))
  batch_time_steps = draw(st.booleans())
  batch = 1 if batch_time_steps else draw(st.integers(1, 3))
  time_step = _value(draw, ts_spec, () if batch_time_steps else (batch,))
  state = _value(draw, state_spec, (batch,)) if state_spec != () else draw(
      st.sampled_from([(), [], None, {}, "junk"]))
  return ts_spec, state_spec, batch_time_steps, time_step, state, draw(st.booleans())


@_SETTINGS
@hypothesis.given(_cases())
def test_every_case_succeeds_correctly_or_raises_value_or_type_error(case):
  ts_spec, state_spec, batch_time_steps, time_step, state, staging = case
  output = policy_step.PolicyStep(tf.TensorSpec([None], tf.float32), (), ())
  plan = marshaling_plan.build_native_plan(ts_spec, state_spec, output, 1,
                                              batch_time_steps, None)
  try:
    flat = plan.flatten(time_step, state, staging)
  except (ValueError, TypeError) as e:
    hypothesis.event(f"rejected with {type(e).__name__}")
    return
  hypothesis.event("accepted")
  # Accepted: every tensor must be the right conversion of its leaf.
  leaves = (nest.flatten_up_to(ts_spec, time_step, check_types=False) +
            (nest.flatten_up_to(state_spec, state, check_types=False) if state_spec != () else []))
  specs = tf.nest.flatten(ts_spec) + tf.nest.flatten(state_spec)
  num_ts = len(tf.nest.flatten(ts_spec))
  assert len(flat) == len(specs) == len(leaves)
  for i, (tensor, spec, leaf) in enumerate(zip(flat, specs, leaves)):
    expected = _expected(spec, leaf, batch_time_steps and i < num_ts)
    assert tensor.dtype == spec.dtype
    assert tuple(tensor.shape) == expected.shape
    np.testing.assert_array_equal(tensor.numpy(), expected)


@st.composite
def _valid_cases(draw):
  ts_spec = draw(_SPEC_NESTS)
  state_spec = draw(st.one_of(st.just(()), _SPEC_NESTS))
  batch_time_steps = draw(st.booleans())
  batch = 1 if batch_time_steps else draw(st.integers(1, 3))
  time_step = _valid_value(draw, ts_spec, () if batch_time_steps else (batch,))
  state = _valid_value(draw, state_spec, (batch,)) if state_spec != () else ()
  return ts_spec, state_spec, batch_time_steps, time_step, state, draw(st.booleans())


@_SETTINGS
@hypothesis.given(_valid_cases())
def test_valid_inputs_are_never_rejected(case):
  ts_spec, state_spec, batch_time_steps, time_step, state, staging = case
  output = policy_step.PolicyStep(tf.TensorSpec([None], tf.float32), (), ())
  plan = marshaling_plan.build_native_plan(ts_spec, state_spec, output, 1, batch_time_steps, None)
  flat = plan.flatten(time_step, state, staging)   # must not raise
  leaves = (nest.flatten_up_to(ts_spec, time_step, check_types=False) +
            (nest.flatten_up_to(state_spec, state, check_types=False) if state_spec != () else []))
  specs = tf.nest.flatten(ts_spec) + tf.nest.flatten(state_spec)
  num_ts = len(tf.nest.flatten(ts_spec))
  for i, (tensor, spec, leaf) in enumerate(zip(flat, specs, leaves)):
    expected = _expected(spec, leaf, batch_time_steps and i < num_ts)
    assert tensor.dtype == spec.dtype and tuple(tensor.shape) == expected.shape
    np.testing.assert_array_equal(tensor.numpy(), expected)
