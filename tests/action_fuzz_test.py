"""Fuzzing the real action() path: one policy, one plan, many calls, batch sizes and failures.

Each example is a sequence of calls on the same loaded policy, on TF and on
LiteRT's native engine (so the staging pool and the native runners are reused
across batch sizes and after failed calls). A valid call must return exactly
what the saved `action` function returns for the same values; an invalid one
must raise ValueError / TypeError and leave the policy working.
"""

import os

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest
import tensorflow as tf
from tf_agents.trajectories import time_step as ts

from policy_runtime.policies import SavedModelPyTFEagerPolicy
import spec_strategies

_SETTINGS = spec_strategies.fuzz_settings(200)
_VALID = ("good",) + spec_strategies.VALID_LAYOUTS
_INVALID = ["wrong_dtype:float64", "wrong_dtype:int64", "wrong_dtype:uint8", "wrong_shape",
            "missing_dim", "junk:None", "junk:text", "junk:object", "junk:dict", "overflow",
            "wrong_batch"]
_JUNK = {"None": None, "text": "text", "object": object(), "dict": {"k": 1}}


@pytest.fixture(scope="module")
def policies(saved):
  fixture = saved("q_8_leaves")
  loaded = tf.saved_model.load(fixture.path)
  def load(batched, backend):
    return SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True, backend=backend,
                                     batch_time_steps=batched)

  on_lite = {batched: load(batched, "lite") for batched in (True, False)}
  assert all(p.lite_runtime == "native" for p in on_lite.values())
  return {
      True: [load(True, "tf"), on_lite[True]],
      False: [load(False, "tf"), on_lite[False]],
      "reference": loaded.action,
      "keep_alive": loaded,
  }


def _leaf(good, kind):
  if kind in spec_strategies.VALID_LAYOUTS:
    return spec_strategies.with_layout(good, kind)
  if kind.startswith("wrong_dtype:"):
    return good.astype(kind.split(":")[1])
  if kind == "wrong_shape":
    return np.zeros(good.shape + (2,), good.dtype)
  if kind == "missing_dim":
    return good.reshape(-1)[:1].reshape(()) if good.ndim else good[None, None]
  if kind == "overflow":  # a Python number the leaf's dtype cannot hold
    big = 1e39 if good.dtype.kind == "f" else 2**40
    return [big] * good.size if good.ndim else big
  if kind == "wrong_batch":
    return np.concatenate([good, good]) if good.ndim else good[None, None]
  return _JUNK[kind.split(":")[1]]


@st.composite
def _calls(draw):
  calls = []
  for _ in range(draw(st.integers(1, 6))):
    batched = draw(st.booleans())
    batch = draw(st.integers(1, 5)) if not batched else 1
    seed = draw(st.integers(0, 2**16))
    invalid = draw(st.booleans()) and draw(st.booleans())  # ~1 call in 4 is broken
    leaves = 11
    kinds = [draw(st.sampled_from(_VALID)) for _ in range(leaves)]
    if invalid:
      kinds[draw(st.integers(0, leaves - 1))] = draw(st.sampled_from(_INVALID))
    calls.append((batched, batch, seed, kinds, invalid))
  return calls


def _arrays(batched, batch, seed):
  rng = np.random.default_rng(seed)
  outer = () if batched else (batch,)
  obs = {f"obs_{i:02d}": rng.standard_normal(outer + (4,)).astype(np.float32) for i in range(8)}
  return ts.TimeStep(rng.integers(0, 3, outer).astype(np.int32),
                     rng.standard_normal(outer).astype(np.float32),
                     np.ones(outer, np.float32), obs)


@_SETTINGS
@hypothesis.given(_calls())
def test_call_sequences_succeed_exactly_or_fail_cleanly(policies, calls):
  for batched, batch, seed, kinds, invalid in calls:
    good = _arrays(batched, batch, seed)
    time_step = tf.nest.pack_sequence_as(
        good, [_leaf(g, k) for g, k in zip(tf.nest.flatten(good), kinds)])
    if invalid:
      for policy in policies[batched]:
        with pytest.raises((ValueError, TypeError)):
          policy.action(time_step)
      hypothesis.event("invalid call rejected")
      continue
    hypothesis.event("valid call")
    reference = policies["reference"](
        tf.nest.map_structure(lambda a: tf.constant(a[None] if batched else a), good), ())
    expected = reference.action.numpy()
    for policy in policies[batched]:
      out = policy.action(time_step).action
      np.testing.assert_array_equal(out, expected[0] if batched else expected)
