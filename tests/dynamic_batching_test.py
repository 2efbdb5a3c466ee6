"""DynamicBatchingPolicy: many threads, one batched call, each caller its own row."""

import threading
import time

import numpy as np
import pytest
import tensorflow as tf
from tf_agents.trajectories import time_step as ts

from policy_runtime.policies import BatcherClosedError, DynamicBatchingPolicy, SavedModelPyTFEagerPolicy
from conftest import (act_during_swaps, load_saved, lstm_episodes, lstm_trace, q_steps,
                      run_threads, scaled_checkpoint)
from tools.fixtures import policy_zoo


@pytest.fixture(params=["tf", "lite"])
def backend(request):
  return request.param


def test_64_threads_get_what_serial_unbatched_calls_get(saved, backend):
  steps = q_steps(64)
  serial = [load_saved(saved, "q_mlp", backend).action(s).action for s in steps]
  results = {}
  # A leader waits (up to 0.2 s) for the batch to fill, so batches form however fast calls are.
  with DynamicBatchingPolicy(load_saved(saved, "q_mlp", backend, batch_time_steps=False),
                             max_wait_us=200_000) as policy:
    def act(i):
      for k in range(20):
        j = (i + k) % 64
        results[(i, k)] = (j, policy.action(steps[j]))
    assert not run_threads(64, act)
    assert policy.mean_batch_size > 1
  for j, out in results.values():
    assert out.action.shape == () and out.action == serial[j]
    assert out.action.flags.owndata and out.action.flags.writeable


def test_lstm_callers_keep_their_own_state_over_20_steps(saved, backend):
  episodes = lstm_episodes(16, 20)
  unbatched = load_saved(saved, "lstm_actor", backend)
  expected = [lstm_trace(unbatched.action, unbatched.get_initial_state(), e) for e in episodes]
  traces = [None] * 16
  wrapped = load_saved(saved, "lstm_actor", backend, batch_time_steps=False)
  with DynamicBatchingPolicy(wrapped) as policy:
    def act(i):
      traces[i] = lstm_trace(policy.action, policy.get_initial_state(), episodes[i])
    assert not run_threads(16, act)
  for got, want in zip(traces, expected):
    for (a, s), (ea, es) in zip(got, want):
      np.testing.assert_array_equal(a, ea)
      for x, y in zip(s, es):
        assert x.shape == (1, 16)
        np.testing.assert_array_equal(x, y)


def test_a_bad_caller_fails_alone_with_the_unbatched_message(saved, backend):
  steps = q_steps(16)
  serial = [load_saved(saved, "q_mlp", backend).action(s).action for s in steps]
  bad = steps[3]._replace(observation=np.zeros(5, np.float32))
  with pytest.raises(ValueError) as unbatched_error:
    load_saved(saved, "q_mlp", backend).action(bad)
  got = {}
  # A leader waits (up to 0.2 s) for the batch to fill, so batches form however fast calls are.
  with DynamicBatchingPolicy(load_saved(saved, "q_mlp", backend, batch_time_steps=False),
                             max_wait_us=200_000) as policy:
    def act(i):
      for _ in range(10):
        got[i] = policy.action(bad if i == 3 else steps[i]).action
    errors = run_threads(16, act)
  assert [i for i, _ in errors] == [3]
  assert str(errors[0][1]) == str(unbatched_error.value)
  assert str(errors[0][1]).startswith("time_step.observation: expected float32[4], got float32[5]")
  for i, action in got.items():
    assert action == serial[i]


def test_a_lone_caller_is_served_without_waiting_for_a_full_batch(saved, backend):
  with DynamicBatchingPolicy(load_saved(saved, "q_mlp", backend, batch_time_steps=False),
                             max_batch_size=64, max_wait_us=20_000) as policy:
    done = []
    run_threads(1, lambda i: done.append(policy.action(q_steps(1)[0])))
    assert len(done) == 1 and policy.mean_batch_size == 1


def test_more_callers_than_max_batch_size_are_served_in_successive_batches(saved, backend):
  steps = q_steps(32)
  serial = [load_saved(saved, "q_mlp", backend).action(s).action for s in steps]
  got = {}
  with DynamicBatchingPolicy(load_saved(saved, "q_mlp", backend, batch_time_steps=False),
                             max_batch_size=4) as policy:
    assert not run_threads(32, lambda i: got.__setitem__(i, policy.action(steps[i]).action))
    assert policy.calls == 32 and policy.batches >= 8
  assert all(got[i] == serial[i] for i in range(32))


def test_close_wakes_waiting_callers_with_a_clear_error(saved, backend):
  policy = DynamicBatchingPolicy(load_saved(saved, "q_mlp", backend, batch_time_steps=False),
                                 max_batch_size=64, max_wait_us=60_000_000)
  results = []

  def act(i):
    try:
      results.append(policy.action(q_steps(1)[0]))
    except BatcherClosedError as e:
      results.append(e)

  threads = [threading.Thread(target=act, args=(i,)) for i in range(3)]
  for t in threads:
    t.start()
  time.sleep(0.5)                 # the batcher is waiting for the batch to fill
  policy.close()
  for t in threads:
    t.join(timeout=30)
    assert not t.is_alive()
  assert len(results) == 3 and all(isinstance(r, BatcherClosedError) for r in results)
  with pytest.raises(BatcherClosedError, match="is closed"):
    policy.action(q_steps(1)[0])


def test_hot_swaps_during_batching_never_mix_weights(saved, backend, tmp_path):
  fixture = saved("q_mlp")
  a = scaled_checkpoint(fixture, str(tmp_path / "a_0000000001"), 1.0)
  b = scaled_checkpoint(fixture, str(tmp_path / "b_0000000002"), -1.0)
  steps = q_steps(8)
  refs = []
  for checkpoint in (a, b):
    reference = load_saved(saved, "q_mlp", backend)
    reference.update_from_checkpoint(checkpoint)
    refs.append([reference.action(s).action for s in steps])
  assert refs[0] != refs[1]
  mixed = []
  # A leader waits (up to 0.2 s) for the batch to fill, so batches form however fast calls are.
  with DynamicBatchingPolicy(load_saved(saved, "q_mlp", backend, batch_time_steps=False),
                             max_wait_us=200_000) as policy:
    def act(i):
      got = [policy.action(s).action for s in steps]
      if got not in refs:   # one caller's 8 sequential calls may straddle a swap;
        if not all(g in (refs[0][k], refs[1][k]) for k, g in enumerate(got)):
          mixed.append(got)

    act_during_swaps(policy, [a, b], swaps=50, threads=8, act=act)
  assert not mixed


def test_a_fixed_batch_export_gets_padded_batches(saved, backend):
  fixture = saved("q_fixed_batch")
  wrapped = SavedModelPyTFEagerPolicy(fixture.path, load_specs_from_pbtxt=True,
                                      batch_time_steps=False, backend=backend)
  steps = q_steps(12, seed=2)
  expected = [wrapped.action(tf.nest.map_structure(lambda x: np.stack([x] * 4), s)).action[0]
              for s in steps]
  got = {}
  with DynamicBatchingPolicy(wrapped, max_batch_size=64) as policy:
    assert policy.max_batch_size == 4
    assert not run_threads(12, lambda i: got.__setitem__(i, policy.action(steps[i]).action))
  assert all(got[i] == expected[i] for i in range(12))


def test_stochastic_rows_sample_independently(saved, backend):
  step = ts.TimeStep(np.int32(1), np.float32(0), np.float32(1), np.ones(5, np.float32))
  got = []
  wrapped = load_saved(saved, "ppo_collect", backend, batch_time_steps=False)
  with DynamicBatchingPolicy(wrapped, max_batch_size=16, max_wait_us=200_000) as policy:
    assert not run_threads(16, lambda i: got.extend(policy.action(step).action.tolist()
                                                     for _ in range(4)))
    assert policy.mean_batch_size > 1
  assert len({tuple(a) for a in got}) == len(got)   # no two rows drew the same noise


def test_wrapping_needs_batch_time_steps_false(saved):
  with pytest.raises(ValueError, match="batch_time_steps=False"):
    DynamicBatchingPolicy(load_saved(saved, "q_mlp"))


def test_a_failing_batched_call_fails_its_callers_and_the_next_batch_runs(tmp_path):
  path = str(tmp_path / "checked")
  policy_zoo.save(policy_zoo.NumericsCheckedPolicy(), path)
  wrapped = SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True, batch_time_steps=False)
  good = ts.TimeStep(np.int32(1), np.float32(0), np.float32(1), np.float32([0, 0, 1]))
  bad = good._replace(observation=np.array([np.nan, 0, 0], np.float32))
  # The batch runs only once all 8 callers are in it: one NaN fails the graph for all 8.
  with DynamicBatchingPolicy(wrapped, max_batch_size=8, max_wait_us=30_000_000) as policy:
    errors = run_threads(8, lambda i: policy.action(bad if i == 0 else good))
    assert sorted(i for i, _ in errors) == list(range(8))
    for _, error in errors:
      assert isinstance(error, RuntimeError)
      assert str(error).startswith("the batched call failed: InvalidArgumentError: ")
      assert "observation has NaN" in str(error)
    assert policy.batches == 0
    ok = []
    assert not run_threads(8, lambda i: ok.append(policy.action(good).action))
    assert ok == [2] * 8 and policy.batches == 1
