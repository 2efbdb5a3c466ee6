"""Soak: 1,000,000 action() calls on the MLP Q policy, RSS growth after warm-up.

    bazel run //tools/benchmarks:soak -- [--calls N] [--warmup N]

Exports the MLP Q policy with PolicySaver, runs `--warmup` calls, then
`--calls` more, sampling RSS along the way, and prints the growth (on every
engine that exists; today the TF eager engine).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from tools.fixtures import tf_agents_keras  # noqa: E402

tf_agents_keras.select_keras_2()   # before TF-Agents resolves tf.keras

import numpy as np  # noqa: E402
from tf_agents.trajectories import time_step as ts  # noqa: E402

from policy_runtime.policies import SavedModelPyTFEagerPolicy  # noqa: E402
from tools.fixtures import policy_zoo  # noqa: E402


def rss_mb() -> float:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def soak(calls: int, warmup: int) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "mlp_q")
    policy_zoo.save(policy_zoo.q_mlp_policy(), path)
    policy = SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True)
  observations = np.random.default_rng(0).standard_normal((1024, 4)).astype(np.float32)
  steps = [ts.TimeStep(np.int32(1), np.float32(0), np.float32(1), o) for o in observations]
  for i in range(warmup):
    policy.action(steps[i % len(steps)])
  start_rss, start = rss_mb(), time.perf_counter()
  samples = []
  for i in range(calls):
    policy.action(steps[i % len(steps)])
    if i % (calls // 10 or 1) == 0:
      samples.append(round(rss_mb() - start_rss, 1))
  elapsed = time.perf_counter() - start
  growth = rss_mb() - start_rss
  return {"engine": "tf", "calls": calls, "warmup": warmup, "rss_start_mb": round(start_rss, 1),
          "rss_growth_mb": round(growth, 1), "samples_mb": samples,
          "us_per_call": round(elapsed / calls * 1e6, 1)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--calls", type=int, default=1_000_000)
  parser.add_argument("--warmup", type=int, default=10_000)
  args = parser.parse_args()
  result = soak(args.calls, args.warmup)
  print(f"engine {result['engine']}: {result['calls']:,} action() calls after "
        f"{result['warmup']:,} warm-up, {result['us_per_call']} us/call; RSS "
        f"{result['rss_start_mb']} MB at start, grew {result['rss_growth_mb']} MB "
        f"(samples: {result['samples_mb']})")


if __name__ == "__main__":
  main()
