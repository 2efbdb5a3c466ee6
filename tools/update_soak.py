"""Update soak: RSS growth per `update_from_checkpoint`, ours (tf, lite) beside TF-Agents.

    bazel run //tools:update_soak -- [--updates N] [--warmup N]

Exports the MLP Q policy with PolicySaver and two checkpoints of it (weights
times 1 and times -1.5), then on each engine alternates between them:
`--warmup` updates, then `--updates` more, sampling RSS, and prints the
growth per update after warm-up. One action() follows each update, so a
policy that defers work to the first call pays it inside the soak.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from tools import tf_agents_keras  # noqa: E402

tf_agents_keras.select_keras_2()   # before TF-Agents resolves tf.keras

import numpy as np  # noqa: E402
from tf_agents.policies import py_tf_eager_policy  # noqa: E402
from tf_agents.trajectories import time_step as ts  # noqa: E402

from policies import SavedModelPyTFEagerPolicy  # noqa: E402
from tools import policy_zoo  # noqa: E402


def rss_kb() -> float:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * resource.getpagesize() / 1024


def _checkpoints(policy, saver, root: str) -> list:
  paths = []
  for i, scale in enumerate([1.0, -1.5]):
    for v in policy.variables():
      v.assign(v * scale)
    path = os.path.join(root, "checkpoints", f"ckpt-{i}")
    saver.save_checkpoint(path)
    for v in policy.variables():
      v.assign(v / scale)
    paths.append(path)
  return paths


def soak(make_policy, checkpoints: list, updates: int, warmup: int) -> dict:
  policy = make_policy()
  step = ts.TimeStep(np.int32(1), np.float32(0), np.float32(1), np.ones(4, np.float32))
  for i in range(warmup):
    policy.update_from_checkpoint(checkpoints[i % 2])
    policy.action(step)
  gc.collect()
  start = rss_kb()
  for i in range(updates):
    policy.update_from_checkpoint(checkpoints[i % 2])
    policy.action(step)
  gc.collect()
  return {"kb_per_update": (rss_kb() - start) / updates, "rss_start_mb": start / 1024}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--updates", type=int, default=2000)
  parser.add_argument("--warmup", type=int, default=200)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as root:
    path = os.path.join(root, "mlp_q")
    tf_policy = policy_zoo.q_mlp_policy()
    saver = policy_zoo.save(tf_policy, path)
    checkpoints = _checkpoints(tf_policy, saver, root)
    engines = {
        "tf-agents": lambda: py_tf_eager_policy.SavedModelPyTFEagerPolicy(
            path, load_specs_from_pbtxt=True),
        "ours tf": lambda: SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True,
                                                     backend="tf"),
        "ours lite": lambda: SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True,
                                                       backend="lite"),
    }
    for name, make in engines.items():
      result = soak(make, checkpoints, args.updates, args.warmup)
      print(f"{name:10s} {args.updates:,} updates after {args.warmup:,}: "
            f"{result['kb_per_update']:.2f} KB/update (RSS {result['rss_start_mb']:.0f} MB at start)",
            flush=True)


if __name__ == "__main__":
  main()
