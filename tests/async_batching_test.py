"""`action_async`: coroutines batched on one event loop, beside threads, on both engines."""

import asyncio
import threading

import numpy as np
import pytest

from policy_runtime.policies import BatcherClosedError, DynamicBatchingPolicy
from policy_runtime.policies import compile_policy, compiled
from policy_runtime.policies.runtime import batching
from conftest import load_saved, lstm_episodes, lstm_trace, q_steps, scaled_checkpoint


@pytest.fixture(params=["tf", "lite"])
def backend(request):
  return request.param


def test_64_coroutines_get_what_serial_calls_get(saved, backend):
  steps = q_steps(64)
  serial = [load_saved(saved, "q_mlp", backend).action(s).action for s in steps]

  async def main(policy):
    async def one(i):
      return [(await policy.action_async(steps[(i + k) % 64])).action for k in range(20)]
    return await asyncio.gather(*(one(i) for i in range(64)))

  with DynamicBatchingPolicy(load_saved(saved, "q_mlp", backend, batch_time_steps=False)) as policy:
    results = asyncio.run(main(policy))
    assert policy.calls == 64 * 20 and policy.mean_batch_size > 4
  for i, actions in enumerate(results):
    for k, action in enumerate(actions):
      assert action.shape == () and action == serial[(i + k) % 64]
      assert action.flags.owndata


def test_16_lstm_coroutines_keep_their_states(saved, backend):
  episodes = lstm_episodes(16, 10)
  unbatched = load_saved(saved, "lstm_actor", backend)
  expected = [lstm_trace(unbatched.action, unbatched.get_initial_state(), e) for e in episodes]

  async def run(policy, episode):
    state, trace = policy.get_initial_state(), []
    for step in episode:
      out = await policy.action_async(step, state)
      state = out.state
      trace.append((out.action, state))
    return trace

  async def main(policy):
    return await asyncio.gather(*(run(policy, e) for e in episodes))

  with DynamicBatchingPolicy(load_saved(saved, "lstm_actor", backend,
                                     batch_time_steps=False)) as policy:
    got = asyncio.run(main(policy))
  for mine, theirs in zip(got, expected):
    for (action, state), (want_action, want_state) in zip(mine, theirs):
      np.testing.assert_allclose(action, want_action, rtol=1e-5, atol=1e-5)
      for s, w in zip(state, want_state):
        np.testing.assert_allclose(s, w, rtol=1e-5, atol=1e-5)


def test_a_bad_caller_fails_alone(saved, backend):
  steps = q_steps(8)
  serial = [load_saved(saved, "q_mlp", backend).action(s).action for s in steps]
  bad = steps[0]._replace(observation=np.zeros(3, np.float32))

  async def main(policy):
    calls = [policy.action_async(s) for s in steps[:4]] + [policy.action_async(bad)] + \
            [policy.action_async(s) for s in steps[4:]]
    return await asyncio.gather(*calls, return_exceptions=True)

  with DynamicBatchingPolicy(load_saved(saved, "q_mlp", backend, batch_time_steps=False)) as policy:
    results = asyncio.run(main(policy))
  assert isinstance(results[4], ValueError)
  assert str(results[4]).startswith("time_step.observation: expected float32[4], got float32[3]")
  good = results[:4] + results[5:]
  assert [r.action for r in good] == serial


def test_cancelled_callers_leak_no_row_and_get_no_one_elses_result(saved, backend):
  steps = q_steps(32)
  serial = [load_saved(saved, "q_mlp", backend).action(s).action for s in steps]

  async def main(policy):
    tasks = [asyncio.ensure_future(policy.action_async(s)) for s in steps]
    await asyncio.sleep(0)          # every task has queued its row (the first leads)
    for task in tasks[1::3]:
      task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    # Afterwards the batcher serves as before: nothing left behind, no lead lost.
    again = await asyncio.gather(*(policy.action_async(s) for s in steps))
    return results, again

  with DynamicBatchingPolicy(load_saved(saved, "q_mlp", backend, batch_time_steps=False),
                             max_batch_size=8) as policy:
    results, again = asyncio.run(main(policy))
    assert not policy._batcher._pending   # pylint: disable=protected-access
  cancelled = [i for i, r in enumerate(results) if isinstance(r, asyncio.CancelledError)]
  assert cancelled                     # waiting ones were cancelled...
  for i, result in enumerate(results):
    if i not in cancelled:
      assert result.action == serial[i]   # ...and nobody got another's row
  assert [r.action for r in again] == serial


def test_cancelling_the_caller_given_the_lead_passes_it_on(saved):
  steps = q_steps(16)
  serial = [load_saved(saved, "q_mlp", "lite").action(s).action for s in steps]
  with DynamicBatchingPolicy(load_saved(saved, "q_mlp", "lite", batch_time_steps=False),
                             max_batch_size=2) as policy:
    async def main():
      for _ in range(20):
        tasks = [asyncio.ensure_future(policy.action_async(s)) for s in steps]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        for task in tasks[2::2]:
          task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
      return await asyncio.wait_for(asyncio.gather(*(policy.action_async(s) for s in steps)), 60)

    assert [r.action for r in asyncio.run(main())] == serial


def test_close_with_waiting_coroutines(saved, backend):
  steps = q_steps(6)
  with DynamicBatchingPolicy(load_saved(saved, "q_mlp", backend, batch_time_steps=False),
                             max_batch_size=8, max_wait_us=60_000_000) as policy:
    async def main():
      tasks = [asyncio.ensure_future(policy.action_async(s)) for s in steps]
      await asyncio.sleep(0.2)        # the leader waits for a full batch; the rest queue
      policy.close()
      return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)

    results = asyncio.run(main())
  assert all(isinstance(r, BatcherClosedError) for r in results)

  async def after():
    await policy.action_async(steps[0])
  with pytest.raises(BatcherClosedError, match="is closed"):
    asyncio.run(after())


def test_hot_swaps_during_async_batching_never_mix_weights_in_a_batch(saved, backend, tmp_path):
  fixture = saved("q_mlp")
  a = scaled_checkpoint(fixture, str(tmp_path / "a_0000000001"), 1.0)
  b = scaled_checkpoint(fixture, str(tmp_path / "b_0000000002"), -1.0)
  steps = q_steps(8)
  refs = []
  for checkpoint in (a, b):
    reference = load_saved(saved, "q_mlp", backend)
    reference.update_from_checkpoint(checkpoint)
    refs.append([int(reference.action(s).action) for s in steps])
  assert refs[0] != refs[1]
  stop = threading.Event()
  with DynamicBatchingPolicy(load_saved(saved, "q_mlp", backend, batch_time_steps=False),
                             max_batch_size=8, max_wait_us=200_000) as policy:
    def swap():
      k = 0
      while not stop.is_set():
        policy.update_from_checkpoint([a, b][k % 2])
        k += 1

    async def main():
      batches = []
      deadline = asyncio.get_running_loop().time() + 60
      # Each gather is one batch of 8 (the leader waits for it to fill); go on until
      # both weight sets have served a few batches.
      while min(sum(b == r for b in batches) for r in refs) < 3 and \
          asyncio.get_running_loop().time() < deadline:
        out = await asyncio.gather(*(policy.action_async(s) for s in steps))
        batches.append([int(o.action) for o in out])
        await asyncio.sleep(0.005)
      return batches

    swapper = threading.Thread(target=swap)
    swapper.start()
    try:
      batches = asyncio.run(main())
    finally:
      stop.set()
      swapper.join()
    assert policy.batches == len(batches)
  assert all(batch in refs for batch in batches)
  assert all(sum(b == r for b in batches) >= 3 for r in refs)   # both weight sets served


def test_threads_and_coroutines_of_two_loops_share_one_batcher(saved, backend):
  steps = q_steps(16)
  serial = [load_saved(saved, "q_mlp", backend).action(s).action for s in steps]
  results, errors = {}, []
  with DynamicBatchingPolicy(load_saved(saved, "q_mlp", backend, batch_time_steps=False)) as policy:
    async def coroutines(tag):
      async def one(i):
        return [(await policy.action_async(steps[(i + k) % 16])).action for k in range(10)]
      results[tag] = await asyncio.gather(*(one(i) for i in range(16)))

    def thread_caller(tag):
      try:
        results[tag] = [[policy.action(steps[(i + k) % 16]).action for k in range(10)]
                        for i in range(16)]
      except BaseException as e:  # pylint: disable=broad-except
        errors.append(e)

    workers = [threading.Thread(target=lambda t=t: asyncio.run(coroutines(t)))
               for t in ("loop_a", "loop_b")]
    workers += [threading.Thread(target=thread_caller, args=(f"thread_{t}",)) for t in range(2)]
    for w in workers:
      w.start()
    for w in workers:
      w.join(timeout=120)
      assert not w.is_alive()
  assert not errors and sorted(results) == ["loop_a", "loop_b", "thread_0", "thread_1"]
  for per_caller in results.values():
    for i, actions in enumerate(per_caller):
      assert actions == [serial[(i + k) % 16] for k in range(10)]


def test_a_compiled_policy_batches_coroutines_without_tensorflow_in_the_batcher(saved, tmp_path):
  out = compile_policy(saved("q_mlp").path, str(tmp_path / "compiled")).path
  steps = q_steps(32)
  serial = compiled.CompiledPolicy(out)
  want = [serial.action(s).action for s in steps]

  async def main(batcher):
    return await asyncio.gather(*(batcher.action_async(s) for s in steps))

  with batching.DynamicBatcher(compiled.CompiledPolicy(out, batch_time_steps=False)) as batcher:
    got = asyncio.run(main(batcher))
  assert [g.action for g in got] == want
