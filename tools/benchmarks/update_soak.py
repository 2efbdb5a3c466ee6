"""Update soak: live memory growth per update, ours (tf, lite, compiled) beside TF-Agents.

    bazel run //tools/benchmarks:update_soak -- [--updates N] [--warmup N]

Exports the MLP Q policy with PolicySaver and two checkpoints of it (weights
times 1 and times -1.5), and compiles each; then, each engine in a fresh child
process, alternates between the two: `--warmup` updates, then `--updates`
more (`update_from_checkpoint`, or `CompiledPolicy.update` between the
compiled directories), and prints the growth per update after warm-up. One
action() follows each update, so a policy that defers work to the first call
pays it inside the soak. RSS is read after `malloc_trim`, so memory glibc
keeps mapped but nothing uses does not count.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from tools.fixtures import tf_agents_keras  # noqa: E402

tf_agents_keras.select_keras_2()   # before TF-Agents resolves tf.keras

import numpy as np  # noqa: E402
from tf_agents.policies import py_tf_eager_policy  # noqa: E402
from tf_agents.trajectories import time_step as ts  # noqa: E402

from policy_runtime.policies import SavedModelPyTFEagerPolicy  # noqa: E402
from tools.fixtures import policy_zoo  # noqa: E402


def rss_kb() -> float:
  """RSS after glibc returns free memory to the system: what is live."""
  ctypes.CDLL("libc.so.6").malloc_trim(0)
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


def soak(policy, update, sources: list, updates: int, warmup: int) -> dict:
  step = ts.TimeStep(np.int32(1), np.float32(0), np.float32(1), np.ones(4, np.float32))
  for i in range(warmup):
    update(sources[i % 2])
    policy.action(step)
  gc.collect()
  start = rss_kb()
  for i in range(updates):
    update(sources[i % 2])
    policy.action(step)
  gc.collect()
  return {"kb_per_update": (rss_kb() - start) / updates, "rss_start_mb": start / 1024}


ENGINES = ("tf-agents", "ours tf", "ours lite", "ours compiled")


def run_engine(engine: str, root: str, updates: int, warmup: int) -> dict:
  """Soaks one engine on the files `prepare` wrote under `root` (in this process)."""
  path, checkpoints = os.path.join(root, "mlp_q"), [os.path.join(root, "checkpoints", f"ckpt-{i}")
                                                   for i in range(2)]
  if engine == "ours compiled":
    from policy_runtime.policies import compiled  # pylint: disable=import-outside-toplevel
    directories = [os.path.join(root, "compiled", str(i)) for i in range(2)]
    policy = compiled.CompiledPolicy(directories[0])
    return soak(policy, policy.update, directories, updates, warmup)
  if engine == "tf-agents":
    policy = py_tf_eager_policy.SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True)
  else:
    policy = SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True,
                                       backend=engine.split()[1])
  return soak(policy, policy.update_from_checkpoint, checkpoints, updates, warmup)


def prepare(root: str) -> None:
  """The export, two checkpoints of it and each compiled, under `root`."""
  from policy_runtime.policies import compile_policy  # pylint: disable=import-outside-toplevel
  path = os.path.join(root, "mlp_q")
  tf_policy = policy_zoo.q_mlp_policy()
  saver = policy_zoo.save(tf_policy, path)
  for i, checkpoint in enumerate(_checkpoints(tf_policy, saver, root)):
    compile_policy(path, os.path.join(root, "compiled", str(i)), checkpoint=checkpoint)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--updates", type=int, default=2000)
  parser.add_argument("--warmup", type=int, default=200)
  parser.add_argument("--engine", choices=ENGINES, help=argparse.SUPPRESS)   # the child
  parser.add_argument("--root", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.engine:
    print(json.dumps(run_engine(args.engine, args.root, args.updates, args.warmup)))
    return
  with tempfile.TemporaryDirectory() as root:
    prepare(root)
    for engine in ENGINES:
      child = subprocess.run(
          [sys.executable, os.path.abspath(__file__), "--engine", engine, "--root", root,
           "--updates", str(args.updates), "--warmup", str(args.warmup)],
          check=True, stdout=subprocess.PIPE, text=True)
      result = json.loads(child.stdout.strip().splitlines()[-1])
      print(f"{engine:14s} {args.updates:,} updates after {args.warmup:,}: "
            f"{result['kb_per_update']:.2f} KB/update (RSS {result['rss_start_mb']:.0f} MB "
            f"at start)", flush=True)


if __name__ == "__main__":
  main()
