"""Many threads, one policy: aggregate steps/s and per-call latency.

For the MLP Q and LSTM actor policies (saved with PolicySaver at run time)
and 1, 8 and 64 threads, each thread steps its own observations (and keeps
its own policy state) through one shared policy object for --seconds:
  * tf_agents:     TF-Agents' `SavedModelPyTFEagerPolicy`, shared,
  * ours_tf:       ours (`backend="tf"`), shared, no batching,
  * ours_lite:     ours (`backend="lite"`), shared, no batching,
  * batching_tf:   `DynamicBatchingPolicy` over ours on TF,
  * batching_lite: `DynamicBatchingPolicy` over ours on LiteRT.
Contenders run interleaved over rounds; reports medians over rounds of
steps/s, p50 and p99 call latency, and the batcher's mean batch size.
Writes concurrency.json and concurrency.png into --output.

    bazel run //tools:concurrency_benchmark -- [--rounds 3] [--seconds 1.5] [--output DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import random
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from tools import tf_agents_keras  # noqa: E402

tf_agents_keras.select_keras_2()   # before TF-Agents resolves tf.keras

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tf_agents.policies import py_tf_eager_policy as tfa_eager  # noqa: E402
from tf_agents.trajectories import time_step as ts  # noqa: E402

from policies import DynamicBatchingPolicy, SavedModelPyTFEagerPolicy  # noqa: E402
from tools import benchmark_output  # noqa: E402
from tools import policy_zoo  # noqa: E402

POLICIES = {k: policy_zoo.BENCHMARK_POLICIES[k] for k in ("mlp_q_1leaf", "lstm_actor_dict")}
CONTENDERS = ("tf_agents", "ours_tf", "ours_lite", "batching_tf", "batching_lite")


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


def run_threads(policy, threads: int, seconds: float) -> tuple:
  """(steps/s over all threads, latencies in us) of `threads` threads for `seconds`."""
  rng = np.random.default_rng(threads)
  per_thread = [_steps(policy.time_step_spec, 16, rng) for _ in range(threads)]
  latencies = [[] for _ in range(threads)]
  start = threading.Barrier(threads + 1)
  stop = threading.Event()
  clock = time.perf_counter

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
      run_threads(policy, 2, 0.2)
    for _ in range(rounds):
      order = [(c, t) for c in CONTENDERS for t in thread_counts]
      random.shuffle(order)
      for contender, threads in order:
        policy = policies[contender]
        before = (getattr(policy, "calls", 0), getattr(policy, "batches", 0))
        rate, lat = run_threads(policy, threads, seconds)
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
  head = "| threads | " + " | ".join(CONTENDERS) + " | batching_lite / tf_agents |"
  lines = [head, "|---:|" + "---:|" * (len(CONTENDERS) + 1)]
  for t in threads:
    cells = []
    for c in CONTENDERS:
      r = by[(c, t)]
      batch = f", batch {r.mean_batch:.1f}" if c.startswith("batching") else ""
      cells.append(f"{r.steps_per_s:,.0f} ({r.p50_us:,.0f} / {r.p99_us:,.0f} us{batch})")
    ratio = by[("batching_lite", t)].steps_per_s / by[("tf_agents", t)].steps_per_s
    lines.append(f"| {t} | " + " | ".join(cells) + f" | {ratio:.0f}x |")
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
