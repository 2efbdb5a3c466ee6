"""Fuzzing the batcher's native row gather and split (validate, call_rows_buffers, pack_row).

Generated layouts, callers' rows (valid, or broken the ways a caller or a
buggy engine could break them) and leases over an identity engine whose
outputs are its inputs. Every case must either give each caller exactly its
own leaves back or raise ValueError / TypeError (or the engine's own error);
anything else, or a crash, fails. `tools/checks/sanitize.sh` runs this under
AddressSanitizer and UndefinedBehaviorSanitizer; FUZZ_EXAMPLES sets the
number of cases.
"""

import collections

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest
import tensorflow as tf

from policy_runtime.policies.runtime import plan_layout

import spec_strategies

_SETTINGS = spec_strategies.fuzz_settings(300)
_SPEC_NESTS = spec_strategies.spec_nests(max_leaves=6, min_dim=0)
Step = collections.namedtuple("Step", ["action", "state", "info"])


class EngineError(Exception):
  """Raised by the fuzzed engine's invoke()."""


_ROW_DAMAGE = ["none"] * 6 + ["not_a_list", "short", "long", "junk_item", "other_shape",
                              "other_dtype", "strided", "empty_rows"]
_LEASE_DAMAGE = ["none"] * 6 + ["not_a_tuple", "short_tuple", "few_inputs", "input_not_array",
                                "small_input", "input_dtype", "fortran_input", "few_outputs",
                                "output_not_array", "invoke_raises", "invoke_shrinks_outputs"]


def _leaf(spec, row: int) -> np.ndarray:
  dtype = spec.dtype.as_numpy_dtype
  shape = tuple(spec.shape[1:])
  return ((np.arange(int(np.prod(shape))) + 3 * row) % 5).astype(dtype).reshape(shape)


def _time_step(spec, row):
  return tf.nest.map_structure(lambda s: _leaf(s, row), spec)


def _state(spec, row):
  return tf.nest.map_structure(lambda s: _leaf(s, row)[None], spec)


def _identity_lease(slot_specs, damage: str):
  """lease(batch) -> (inputs, invoke, outputs, batch): invoke copies inputs to outputs."""

  def lease(batch):
    inputs = [np.zeros((batch,) + tuple(s.shape[1:]), s.dtype.as_numpy_dtype) for s in slot_specs]
    outputs = [np.zeros_like(a) for a in inputs]

    def invoke():
      if damage == "invoke_raises":
        raise EngineError("the engine failed")
      for src, dst in zip(inputs, outputs):
        dst[...] = src
      if damage == "invoke_shrinks_outputs":
        outputs.clear()

    if damage == "not_a_tuple":
      return [inputs, invoke, outputs, batch]
    if damage == "short_tuple":
      return (inputs, invoke)
    if damage == "few_inputs" and inputs:
      inputs.pop()
    if damage == "input_not_array" and inputs:
      inputs[0] = inputs[0].tolist()
    if damage == "small_input" and inputs:
      inputs[0] = inputs[0].reshape(-1)[:-1] if inputs[0].size else np.zeros(1, inputs[0].dtype)
    if damage == "input_dtype" and inputs:
      inputs[0] = inputs[0].astype(np.complex128)
    if damage == "fortran_input" and inputs and inputs[0].ndim > 1 and inputs[0].size > 1:
      inputs[0] = np.asfortranarray(np.zeros(inputs[0].shape[::-1], inputs[0].dtype).T)
    if damage == "few_outputs" and outputs:
      outputs.pop()
    if damage == "output_not_array" and outputs:
      outputs[0] = "not an array"
    return (inputs, invoke, outputs, batch)

  released = []
  return lease, released.append, released


def _damage_rows(draw, rows, damage):
  if damage == "empty_rows":
    return []
  if not rows[0]:
    return rows
  victim = draw(st.integers(0, len(rows) - 1))
  row = list(rows[victim])
  slot = draw(st.integers(0, len(row) - 1))
  if damage == "not_a_list":
    rows[victim] = tuple(row)
  elif damage == "short":
    rows[victim] = row[:-1]
  elif damage == "long":
    rows[victim] = row + [row[0]]
  elif damage == "junk_item":
    row[slot] = draw(st.sampled_from([None, 1.5, "text", [1, 2], object()]))
    rows[victim] = row
  elif damage == "other_shape":
    row[slot] = np.zeros(row[slot].shape + (2,), row[slot].dtype)
    rows[victim] = row
  elif damage == "other_dtype":
    row[slot] = row[slot].astype(np.complex64)
    rows[victim] = row
  elif damage == "strided":
    row[slot] = np.repeat(row[slot], 2, axis=-1)[..., ::2] if row[slot].ndim else row[slot]
    rows[victim] = row
  return rows


@st.composite
def _cases(draw):
  ts_spec = draw(_SPEC_NESTS)
  state_spec = draw(st.one_of(st.just(()), _SPEC_NESTS))
  callers = draw(st.integers(1, 5))
  pad_to = draw(st.sampled_from([0, callers, callers + 1, 8, -3]))
  return (ts_spec, state_spec, callers, pad_to, draw(st.sampled_from(_ROW_DAMAGE)),
          draw(st.sampled_from(_LEASE_DAMAGE)), draw(st.data()))


@_SETTINGS
@hypothesis.given(_cases())
def test_rows_come_back_to_their_callers_or_a_clear_error(case):
  ts_spec, state_spec, callers, pad_to, row_damage, lease_damage, data = case
  slot_specs = tf.nest.flatten(ts_spec) + tf.nest.flatten(state_spec)
  output = Step(ts_spec, state_spec, ())
  plan = plan_layout.build_native_plan(ts_spec, state_spec, output, len(slot_specs), True, None,
                                       Step)
  rows = [plan.validate(_time_step(ts_spec, r), _state(state_spec, r)) for r in range(callers)]
  rows = _damage_rows(data.draw, rows, row_damage)
  lease, release, released = _identity_lease(slot_specs, lease_damage)
  try:
    outputs = plan.call_rows_buffers(rows, pad_to, lease, release)
  except (ValueError, TypeError, EngineError) as e:
    hypothesis.event(f"rejected: {type(e).__name__}")
    assert len(released) <= 1, "a lease released twice"
    return
  assert len(released) == 1, "the lease was not released"
  hypothesis.event(f"accepted with {row_damage} rows")
  batch = max(len(rows), pad_to)
  for output, spec in zip(outputs, slot_specs):
    assert output.shape == (batch,) + tuple(spec.shape[1:])
    assert not output[len(rows):].any(), "padding rows are not zeros"
  for r in range(len(rows)):
    step = plan.pack_row(outputs, r)
    tf.nest.map_structure(np.testing.assert_array_equal, step.action, _time_step(ts_spec, r))
    tf.nest.map_structure(np.testing.assert_array_equal, step.state, _state(state_spec, r))
  for bad_row in (-1, batch, 2**62):
    with pytest.raises(ValueError, match="row out of range"):
      plan.pack_row(outputs, bad_row)


@_SETTINGS
@hypothesis.given(_SPEC_NESTS, st.lists(st.sampled_from(
    [None, 1, "x", [1], (), np.zeros(0), np.zeros((0, 3)), np.zeros(3)]), max_size=4),
    st.integers(-2, 3))
def test_pack_row_takes_only_call_rows_outputs(ts_spec, junk, row):
  slot_specs = tf.nest.flatten(ts_spec)
  plan = plan_layout.build_native_plan(ts_spec, (), Step(ts_spec, (), ()), len(slot_specs), True,
                                       None, Step)
  try:
    plan.pack_row(junk, row)
  except (ValueError, TypeError):
    return
  assert len(junk) >= len(slot_specs)
