"""Many threads, one policy: aggregate steps/s and per-call latency.

For the MLP Q and LSTM actor policies (saved with PolicySaver at run time)
and 1, 8 and 64 threads, each thread steps its own observations (and keeps
its own policy state) through one shared policy object for --seconds:
  * tf_agents:     TF-Agents' `SavedModelPyTFEagerPolicy`, shared,
  * ours_tf:       ours (`backend="tf"`), shared, no batching,
  * ours_lite:     ours (`backend="lite"`), shared, no batching,
  * batching_tf:   `DynamicBatchingPolicy` over ours on TF,
  * batching_lite: `DynamicBatchingPolicy` over ours on LiteRT,
  * async_lite:    as many asyncio coroutines on one event loop, each awaiting
                   `action_async` of one `DynamicBatchingPolicy` over LiteRT,
and two floors with no policy work at all, measured in the same run:
  * floor_threads: N threads, each handing a request to one server thread
                   and waiting on its own lock for the reply,
  * floor_asyncio: N coroutines, each awaiting a future that one batching
                   task resolves.
Contenders run interleaved over rounds; reports medians over rounds of
steps/s, p50 and p99 call latency, the batcher's mean batch size, and the
ratios to the floors.
Writes concurrency.json and concurrency.png into --output.

    bazel run //tools/benchmarks:concurrency_benchmark -- [--rounds 3] [--seconds 1.5] [--output DIR]
"""

from __future__ import annotations

import _thread
import argparse
import asyncio
import collections
import contextlib
import dataclasses
import os
import random
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from tools.fixtures import tf_agents_keras  # noqa: E402

tf_agents_keras.select_keras_2()   # before TF-Agents resolves tf.keras

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tf_agents.policies import py_tf_eager_policy as tfa_eager  # noqa: E402
from tf_agents.trajectories import time_step as ts  # noqa: E402

from policy_runtime.policies import DynamicBatchingPolicy, SavedModelPyTFEagerPolicy  # noqa: E402
from tools.benchmarks import benchmark_output  # noqa: E402
from tools.fixtures import policy_zoo  # noqa: E402

POLICIES = {k: policy_zoo.BENCHMARK_POLICIES[k] for k in ("mlp_q_1leaf", "lstm_actor_dict")}
CONTENDERS = ("tf_agents", "ours_tf", "ours_lite", "batching_tf", "batching_lite", "async_lite",
              "floor_threads", "floor_asyncio")
_ASYNC = ("async_lite", "floor_asyncio")


@dataclasses.dataclass
class Row:
  policy: str
  contender: str
  threads: int
  steps_per_s: float
  p50_us: float
  p99_us: float
  mean_batch: float


def _open(path: str, contender: str):
  """The shared policy object for `contender`, and its closer."""
  if contender.startswith("floor"):
    return _Floor(), None
  if contender == "async_lite":
    contender = "batching_lite"
  if contender == "tf_agents":
    return tfa_eager.SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True), None
  backend = contender.split("_")[1]
  if contender.startswith("ours"):
    return SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True, backend=backend), None
  policy = DynamicBatchingPolicy(SavedModelPyTFEagerPolicy(
      path, load_specs_from_pbtxt=True, batch_time_steps=False, backend=backend))
  return policy, policy.close


def _steps(spec, count: int, rng):
  def sample(s):
    return rng.standard_normal(s.shape).astype(s.dtype)
  return [ts.TimeStep(np.int32(ts.StepType.MID), np.float32(0), np.float32(1),
                      tf.nest.map_structure(sample, spec.observation)) for _ in range(count)]


class _Floor:
  """No policy: only the hand-off (a server thread, or a batching task on the loop)."""

  time_step_spec = None

  def __init__(self):
    self._pending = collections.deque()
    self._ready = threading.Condition()
    self._server = None

  def get_initial_state(self, batch_size=None):
    return ()

  def serve(self, stop: threading.Event) -> None:
    """The server thread: replies to every waiting request at once."""
    while not stop.is_set():
      with self._ready:
        while not self._pending and not stop.is_set():
          self._ready.wait(0.05)
        waiting = list(self._pending)
        self._pending.clear()
      for lock in waiting:
        lock.release()

  def action(self, unused_step, unused_state):
    lock = _thread.allocate_lock()
    lock.acquire()
    with self._ready:
      self._pending.append(lock)
      self._ready.notify()
    lock.acquire()
    return _NO_STATE

  async def batch_task(self, stop: threading.Event) -> None:
    """The batching task: resolves every waiting future, once per loop iteration."""
    while not stop.is_set():
      waiting = list(self._pending)
      self._pending.clear()
      for future in waiting:
        future.set_result(_NO_STATE)
      await asyncio.sleep(0)

  async def action_async(self, unused_step, unused_state):
    future = asyncio.get_running_loop().create_future()
    self._pending.append(future)
    return await future


_NoState = collections.namedtuple("_NoState", ["state"])
_NO_STATE = _NoState(())


def run_threads(policy, threads: int, seconds: float) -> tuple:
  """(steps/s over all threads, latencies in us) of `threads` threads for `seconds`."""
  rng = np.random.default_rng(threads)
  spec = policy.time_step_spec
  per_thread = [_steps(spec, 16, rng) if spec else [None] * 16 for _ in range(threads)]
  latencies = [[] for _ in range(threads)]
  start = threading.Barrier(threads + 1)
  stop = threading.Event()
  clock = time.perf_counter
  server = None
  if isinstance(policy, _Floor):
    server = threading.Thread(target=policy.serve, args=(stop,), daemon=True)
    server.start()

  def loop(i):
    steps, own = per_thread[i], latencies[i]
    state = policy.get_initial_state(1)
    start.wait()
    k = 0
    while not stop.is_set():
      t0 = clock()
      state = policy.action(steps[k & 15], state).state
      own.append(clock() - t0)
      k += 1

  workers = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(threads)]
  for w in workers:
    w.start()
  start.wait()
  began = clock()
  time.sleep(seconds)
  stop.set()
  for w in workers:
    w.join()
  elapsed = clock() - began
  if server is not None:
    server.join()
  flat = np.concatenate([np.asarray(x) for x in latencies]) * 1e6
  return len(flat) / elapsed, flat


def run_coroutines(policy, tasks: int, seconds: float) -> tuple:
  """(steps/s over all coroutines, latencies in us) of `tasks` coroutines on one loop."""
  rng = np.random.default_rng(tasks)
  spec = policy.time_step_spec
  per_task = [_steps(spec, 16, rng) if spec else [None] * 16 for _ in range(tasks)]
  latencies = [[] for _ in range(tasks)]
  stop = threading.Event()
  clock = time.perf_counter

  async def one(i):
    steps, own = per_task[i], latencies[i]
    state = policy.get_initial_state(1)
    k = 0
    while not stop.is_set():
      t0 = clock()
      state = (await policy.action_async(steps[k & 15], state)).state
      own.append(clock() - t0)
      k += 1

  async def main():
    helpers = []
    if isinstance(policy, _Floor):
      helpers.append(asyncio.ensure_future(policy.batch_task(stop)))
    runners = [asyncio.ensure_future(one(i)) for i in range(tasks)]
    began = clock()
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*runners, *helpers)
    return clock() - began

  elapsed = asyncio.run(main())
  flat = np.concatenate([np.asarray(x) for x in latencies]) * 1e6
  return len(flat) / elapsed, flat


def measure(path: str, name: str, thread_counts, rounds: int, seconds: float) -> list:
  samples = {}
  policies = {}
  closers = []
  try:
    for contender in CONTENDERS:
      policies[contender], close = _open(path, contender)
      if close:
        closers.append(close)
    for contender, policy in policies.items():   # warm up every path once
      (run_coroutines if contender in _ASYNC else run_threads)(policy, 2, 0.2)
    for _ in range(rounds):
      order = [(c, t) for c in CONTENDERS for t in thread_counts]
      random.shuffle(order)
      for contender, threads in order:
        policy = policies[contender]
        before = (getattr(policy, "calls", 0), getattr(policy, "batches", 0))
        run = run_coroutines if contender in _ASYNC else run_threads
        rate, lat = run(policy, threads, seconds)
        calls = getattr(policy, "calls", 0) - before[0]
        batches = getattr(policy, "batches", 0) - before[1]
        samples.setdefault((contender, threads), []).append(
            (rate, float(np.percentile(lat, 50)), float(np.percentile(lat, 99)),
             calls / batches if batches else 1.0))
  finally:
    for close in closers:
      close()
  rows = []
  for (contender, threads), runs in samples.items():
    med = np.median(np.array(runs), axis=0)
    rows.append(Row(name, contender, threads, *map(float, med)))
  rows.sort(key=lambda r: (r.threads, CONTENDERS.index(r.contender)))
  return rows


def table(rows, policy: str) -> str:
  threads = sorted({r.threads for r in rows if r.policy == policy})
  by = {(r.contender, r.threads): r for r in rows if r.policy == policy}
  ratios = ("batching_lite / tf_agents", "batching_lite / floor_threads",
            "async_lite / floor_asyncio", "batching_lite / ours_lite")
  head = "| threads | " + " | ".join(CONTENDERS) + " | " + " | ".join(ratios) + " |"
  lines = [head, "|---:|" + "---:|" * (len(CONTENDERS) + len(ratios))]
  for t in threads:
    cells = []
    for c in CONTENDERS:
      r = by[(c, t)]
      batch = f", batch {r.mean_batch:.1f}" if c.startswith(("batching", "async_lite")) else ""
      cells.append(f"{r.steps_per_s:,.0f} ({r.p50_us:,.0f} / {r.p99_us:,.0f} us{batch})")
    for ratio in ratios:
      over, under = ratio.split(" / ")
      cells.append(f"{by[(over, t)].steps_per_s / by[(under, t)].steps_per_s:.2f}x")
    lines.append(f"| {t} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot(rows):
  names = sorted({r.policy for r in rows}, key=list(POLICIES).index)
  fig, axes = benchmark_output.figure(len(names), 5.5 * len(names))
  for ax, name in zip(axes, names):
    for contender in CONTENDERS:
      series = sorted((r for r in rows if r.policy == name and r.contender == contender),
                      key=lambda r: r.threads)
      ax.plot([r.threads for r in series], [r.steps_per_s for r in series], "o-",
              label=contender)
    ax.set(xscale="log", yscale="log", xlabel="threads", ylabel="steps/s (all threads)",
           title=name)
    ax.legend(fontsize=8)
  return fig


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--seconds", type=float, default=1.5)
  parser.add_argument("--threads", default="1,8,64")
  parser.add_argument("--policies", default=",".join(POLICIES))
  benchmark_output.add_output_argument(parser)
  args = parser.parse_args()

  thread_counts = [int(t) for t in args.threads.split(",")]
  names = args.policies.split(",")
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for name in names:
      path = os.path.join(tmp, name)
      policy_zoo.save(POLICIES[name](), path)
      rows.extend(measure(path, name, thread_counts, args.rounds, args.seconds))
      print(f"\n{name}: steps/s (p50 / p99 latency)\n" + table(rows, name), flush=True)
  result = {"rows": [dataclasses.asdict(r) for r in rows], "rounds": args.rounds,
            "seconds_per_run": args.seconds}
  benchmark_output.write(args.output, "concurrency", result, plot(rows))


if __name__ == "__main__":
  with contextlib.suppress(KeyboardInterrupt):
    main()
