"""The native LiteRT engine (LiteRT's C API): parity with the interpreter on every lite
fixture, its runners, and the fallback to the interpreter when it cannot run. (Threads,
hot swaps and the batcher on it: lite_backend_test, dynamic_batching_test,
async_batching_test, whose lite cases run natively.)"""

import ctypes.util
import logging

import numpy as np
import pytest
import tensorflow as tf

from conftest import lite_twin, spec_inputs
from policy_runtime.policies import SavedModelPyTFEagerPolicy
from policy_runtime.policies.runtime import lite_model
from policy_runtime.policies.engines import lite_validation
from policy_runtime.policies.runtime import litert_library
from policy_runtime.policies.runtime import sample_statistics

LITE_FIXTURES = ("q_mlp", "q_8_leaves", "lstm_actor", "ppo_collect", "random", "q_fixed_batch",
                 "q_sampling", "epsilon_greedy", "ppo_categorical", "gaussian_actor",
                 "lstm_stochastic")
DRAW_BATCH, DRAW_CALLS = 256, 16


def _load(fixture, **kwargs):
  return SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True, backend="lite",
                                   **kwargs)


def _model(policy) -> lite_model.LiteModel:
  return lite_model.model_of(policy._switch.active.call_args)  # pylint: disable=protected-access


@pytest.mark.parametrize("name", LITE_FIXTURES)
def test_native_matches_the_interpreter(saved, name):
  """Deterministic outputs: integers exact, floats within the lite tolerance; sampled outputs:
  the distribution check, per element, between the two engines."""
  fixture = saved(name)
  modes = [(False, (fixture.batch_size,))] if fixture.batch_size else [(True, ()), (False, (5,))]
  for batch_time_steps, outer in modes:
    policy = _load(fixture, batch_time_steps=batch_time_steps)
    native = _model(policy)
    assert native.engine is not None, native.native_reason
    twin = lite_twin(policy, native=False)
    assert twin.engine is None
    call = policy._plan.native_call_buffers  # pylint: disable=protected-access
    sampled = [o.kind == "sampled" for o in policy.lite_validation.outputs]
    for time_step, state in spec_inputs(policy, 30, outer):
      got = tf.nest.flatten(call(time_step, state, *native.call_args))
      want = tf.nest.flatten(call(time_step, state, *twin.call_args))
      assert len(got) == len(want) == len(sampled)
      for g, w, s in zip(got, want, sampled):
        assert g.dtype == w.dtype and g.shape == w.shape
        if s:
          continue
        if np.issubdtype(w.dtype, np.floating):
          np.testing.assert_allclose(g, w, rtol=lite_validation.FLOAT_RTOL,
                                     atol=lite_validation.FLOAT_ATOL)
        else:
          np.testing.assert_array_equal(g, w)
  if not any(sampled) or fixture.batch_size:
    return
  # On the last (batched) policy: draws for one input, repeated.
  time_step, state = spec_inputs(policy, 1, (), seed=7)[0]
  time_steps, states = lite_validation.copies(time_step, state, DRAW_BATCH)
  draws = {}
  for label, model in (("native", native), ("interpreter", twin)):
    runs = [tf.nest.flatten(call(time_steps, states, *model.call_args))
            for _ in range(DRAW_CALLS)]
    draws[label] = [np.concatenate([r[i] for r in runs]) for i in range(len(sampled))]
  tests = sum(int(np.prod(d.shape[1:], dtype=np.int64)) for d, s in
              zip(draws["native"], sampled) if s)
  for i, s in enumerate(sampled):
    if s:
      sample_statistics.compare_distributions(
          f"leaf {i}", [draws["interpreter"][i]], [draws["native"][i]],
          tf.nest.flatten(policy.action_spec)[0] if i == 0 else None, tests)


def test_a_runner_reads_each_call_s_inputs(saved):
  """Runners keep their input bindings after the first run: every call still sees its own
  inputs, and the outputs handed back are the caller's own."""
  fixture = saved("q_mlp")
  policy = _load(fixture, batch_time_steps=False)
  native = _model(policy)
  twin = lite_twin(policy, native=False)
  call = policy._plan.native_call_buffers  # pylint: disable=protected-access
  results = []
  for time_step, state in spec_inputs(policy, 50, (3,), seed=1):
    got = call(time_step, state, *native.call_args)
    np.testing.assert_array_equal(got.action, call(time_step, state, *twin.call_args).action)
    results.append((got, got.action.copy()))
  assert len({tuple(a) for _, a in results}) > 2
  for got, kept in results:
    np.testing.assert_array_equal(got.action, kept)   # not overwritten by later calls
  assert native.engine.batch_sizes()[-1] == 3


def test_runners_are_pooled_per_batch_size_and_the_oldest_size_goes(saved):
  fixture = saved("q_mlp")
  policy = _load(fixture, batch_time_steps=False)
  native = _model(policy)
  call = policy._plan.native_call_buffers  # pylint: disable=protected-access
  sizes = list(range(2, 2 + lite_model.MAX_BATCH_SIZES + 2))
  for batch in sizes:
    (time_step, state), = spec_inputs(policy, 1, (batch,))
    assert call(time_step, state, *native.call_args).action.shape == (batch,)
  assert native.engine.batch_sizes() == sizes[-lite_model.MAX_BATCH_SIZES:]
  native.discard(sizes[-1])
  assert sizes[-1] not in native.engine.batch_sizes()
  (time_step, state), = spec_inputs(policy, 1, (sizes[-1],))
  assert call(time_step, state, *native.call_args).action.shape == (sizes[-1],)


@pytest.mark.parametrize("setting, reason", [
    ("/nonexistent/libLiteRt.so", "/nonexistent/libLiteRt.so"),
    ("", "POLICIES_LITERT_LIBRARY is empty"),
    (ctypes.util.find_library("m") or "libm.so.6", "does not export LiteRtCreateEnvironment"),
])
def test_the_interpreter_takes_over_when_the_library_cannot_be_used(saved, monkeypatch, caplog,
                                                                    setting, reason):
  monkeypatch.setenv(litert_library.LIBRARY_ENV, setting)
  fixture = saved("lstm_actor")
  with caplog.at_level(logging.INFO, logger="policy_runtime"):
    on_interpreter = _load(fixture)
  model = _model(on_interpreter)
  assert model.engine is None and reason in model.native_reason
  assert on_interpreter.lite_runtime == f"interpreter ({model.native_reason})"
  assert any("not natively" in r.getMessage() and reason in r.getMessage()
             for r in caplog.records)
  monkeypatch.delenv(litert_library.LIBRARY_ENV)
  native = _load(fixture)
  assert native.lite_runtime == "native"
  state_a, state_b = on_interpreter.get_initial_state(), native.get_initial_state()
  for time_step, _ in spec_inputs(native, 10, ()):
    a, b = on_interpreter.action(time_step, state_a), native.action(time_step, state_b)
    np.testing.assert_allclose(a.action, b.action, rtol=1e-5, atol=1e-5)
    state_a, state_b = a.state, b.state


def test_only_checked_versions_of_the_wheel_are_loaded():
  assert litert_library.version_reason("2.3.0") is None
  assert "2.4.1" in litert_library.version_reason("2.4.1")
  assert litert_library.find().path.endswith("libLiteRt.so")


def test_a_model_the_engine_refuses_names_why(saved):
  native = _model(_load(saved("q_mlp")))
  with pytest.raises(ValueError, match="has no nope signature"):
    from policy_runtime.native import marshal  # pylint: disable=import-outside-toplevel
    marshal.LiteRtEngine(litert_library.find().path, native.flatbuffer, "nope",
                         native.input_names, native.output_names, [[-1]], 1,
                         lite_model.MAX_BATCH_SIZES, 1)


@pytest.mark.parametrize("native", [True, False])
def test_leaves_in_the_other_byte_order_are_fed(saved, monkeypatch, native):
  """A big-endian leaf (valid input) reaches LiteRT's buffers converted, on both runtimes."""
  if not native:
    monkeypatch.setenv(litert_library.LIBRARY_ENV, "")
  policy = _load(saved("q_8_leaves"), batch_time_steps=False)
  assert (policy.lite_runtime == "native") == native
  for time_step, state in spec_inputs(policy, 10, (3,), seed=4):
    swapped = tf.nest.map_structure(lambda a: a.astype(a.dtype.newbyteorder(">")), time_step)
    np.testing.assert_array_equal(policy.action(swapped, state).action,
                                  policy.action(time_step, state).action)


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("name", ["q_mlp", "lstm_actor"])
def test_a_batch_of_zero_gives_what_tf_gives(saved, monkeypatch, name, native):
  if not native:
    monkeypatch.setenv(litert_library.LIBRARY_ENV, "")
  fixture = saved(name)
  on_lite = _load(fixture, batch_time_steps=False)
  assert (on_lite.lite_runtime == "native") == native
  on_tf = SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True,
                                    batch_time_steps=False)
  (time_step, state), = spec_inputs(on_tf, 1, (0,))
  for got, want in zip(tf.nest.flatten(on_lite.action(time_step, state)),
                       tf.nest.flatten(on_tf.action(time_step, state))):
    assert got.dtype == want.dtype and got.shape == want.shape and got.shape[0] == 0
