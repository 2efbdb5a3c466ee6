"""Compiled policies against the SavedModel: start-up, memory, action(), Ray workers.

On the MLP Q policy (saved with PolicySaver at run time, then compiled):
  * start-up: a fresh process per contender imports what it needs and loads
    the policy; wall time from interpreter start to loaded, and peak RSS.
    TF-Agents' class, ours on tf, ours on lite, CompiledPolicy in this
    (TF-installed) interpreter, and CompiledPolicy in the TF-free environment;
  * action(): CompiledPolicy against backend="lite" at batch 1, 16 and 256,
    interleaved over rounds in one process (medians, us per call);
  * Ray: `evaluate(..., workers=2)` from the SavedModel and from the compiled
    directory: median worker import + load, and the whole run.
Writes compiled.json and compiled.png into --output.

    bazel run //tools/benchmarks:compiled_benchmark -- [--rounds 5] [--starts 5] [--output DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
warnings.filterwarnings("ignore", message="Encoding a StructuredValue")   # PolicySaver's note
from policy_runtime.policies.saved_model import quiet_gym  # noqa: E402,F401  before TF-Agents, which imports gym
from tools.fixtures import tf_agents_keras  # noqa: E402

tf_agents_keras.select_keras_2()

import numpy as np  # noqa: E402
from tf_agents.specs import array_spec  # noqa: E402

from policy_runtime.policies import SavedModelPyTFEagerPolicy, compile_policy, compiled  # noqa: E402
from tools.benchmarks import benchmark_output  # noqa: E402
from tools.fixtures import policy_zoo  # noqa: E402

_START = """
import time; start = time.time()
import json, sys
{body}
# VmHWM: this process's peak RSS (getrusage's maxrss keeps the forking parent's across exec).
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
print(json.dumps({{"seconds": time.time() - start, "rss_mb": rss,
                   "tensorflow": "tensorflow" in sys.modules}}))
"""

CONTENDERS = {
    "tf_agents": ("from policy_runtime.policies.saved_model import quiet_gym\n"
                  "from tf_agents.policies import py_tf_eager_policy as p\n"
                  "p.SavedModelPyTFEagerPolicy({export!r}, load_specs_from_pbtxt=True)"),
    "ours_tf": ("from policy_runtime.policies import SavedModelPyTFEagerPolicy as P\n"
                "P({export!r}, load_specs_from_pbtxt=True)"),
    "ours_lite": ("from policy_runtime.policies import SavedModelPyTFEagerPolicy as P\n"
                  "P({export!r}, load_specs_from_pbtxt=True, backend='lite')"),
    "compiled": "from policy_runtime.policies import compiled\ncompiled.CompiledPolicy({out!r})",
}


def start_up(python: str, body: str, starts: int) -> dict:
  """Median seconds and peak RSS of `starts` fresh processes running `body`."""
  runs = []
  for _ in range(starts):
    # The interpreter's start is counted too: time from before the exec.
    begin = time.time()
    result = subprocess.run([python, "-c", _START.format(body=body)], capture_output=True,
                            text=True, env=dict(os.environ), timeout=600, check=False)
    if result.returncode != 0:
      raise RuntimeError(result.stderr[-2000:])
    run = json.loads(result.stdout.strip().splitlines()[-1])
    run["seconds"] = time.time() - begin
    runs.append(run)
  return {"seconds": float(np.median([r["seconds"] for r in runs])),
          "rss_mb": float(np.median([r["rss_mb"] for r in runs])),
          "tensorflow": runs[0]["tensorflow"]}


def action_times(export: str, out: str, rounds: int, calls: int) -> list:
  rows = []
  rng = np.random.RandomState(0)
  for batch in (1, 16, 256):
    unbatched = batch == 1
    lite = SavedModelPyTFEagerPolicy(export, load_specs_from_pbtxt=True, backend="lite",
                                     batch_time_steps=unbatched)
    mine = compiled.CompiledPolicy(out, batch_time_steps=unbatched)
    step = array_spec.sample_spec_nest(lite.time_step_spec, rng,
                                       outer_dims=() if unbatched else (batch,))
    times = {"lite": [], "compiled": []}
    for _ in range(rounds):
      for name, policy in (("lite", lite), ("compiled", mine)):
        begin = time.perf_counter()
        for _ in range(calls):
          policy.action(step)
        times[name].append((time.perf_counter() - begin) / calls * 1e6)
    lite_us, compiled_us = np.median(times["lite"]), np.median(times["compiled"])
    rows.append({"batch": batch, "lite_us": float(lite_us), "compiled_us": float(compiled_us),
                 "compiled_over_lite": float(compiled_us / lite_us)})
    print(f"  batch {batch:3d}: lite {lite_us:7.1f} us, compiled {compiled_us:7.1f} us "
          f"({compiled_us / lite_us:.2f}x)")
  return rows


def ray_runs(export: str, out: str) -> dict:
  from policy_runtime.policies import evaluation  # pylint: disable=import-outside-toplevel
  from policy_runtime.policies.scale_out import local_ray  # pylint: disable=import-outside-toplevel
  result = {}
  with local_ray.instance(num_cpus=2):
    for name, path in (("saved_model", export), ("compiled", out)):
      run = evaluation.evaluate(path, "CartPole-v1", episodes=20, workers=2)
      result[name] = {"worker_load_s": float(np.median(run.worker_load_s)),
                      "load_time_s": run.load_time_s, "wall_time_s": run.wall_time_s,
                      "workers_import_tensorflow": sum(run.worker_tensorflow)}
      print(f"  {name:12s}: worker import + load {result[name]['worker_load_s']:.2f} s "
            f"(until all loaded {run.load_time_s:.2f} s), run {run.wall_time_s:.2f} s, "
            f"TensorFlow on {sum(run.worker_tensorflow)} of 2 workers")
  return result


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tffree-python", required=True,
                      help="the TF-free environment's interpreter (set by the Bazel target)")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--calls", type=int, default=2000)
  parser.add_argument("--starts", type=int, default=5)
  benchmark_output.add_output_argument(parser)
  args = parser.parse_args()
  work = tempfile.mkdtemp(prefix="compiled_benchmark_")
  export = os.path.join(work, "mlp_q")
  policy_zoo.save(policy_zoo.q_mlp_policy(), export, train_step=1)
  out = compile_policy(export, os.path.join(work, "compiled")).path
  print("start-up of a fresh process that imports and loads the MLP Q policy (median):")
  startup = {}
  for name, body in CONTENDERS.items():
    startup[name] = start_up(sys.executable, body.format(export=export, out=out), args.starts)
  startup["compiled_tffree"] = start_up(args.tffree_python,
                                        CONTENDERS["compiled"].format(out=out), args.starts)
  for name, row in startup.items():
    print(f"  {name:16s} {row['seconds']:5.2f} s  {row['rss_mb']:6.0f} MB"
          f"{'' if row['tensorflow'] else '  (no TensorFlow)'}")
  print("action() on the MLP Q policy (median us per call):")
  actions = action_times(export, out, args.rounds, args.calls)
  print("Ray evaluate, 2 workers, 20 episodes of CartPole-v1:")
  ray = ray_runs(export, out)
  fig, (left, right) = benchmark_output.figure(2, 11)
  names = list(startup)
  left.bar(names, [startup[n]["seconds"] for n in names])
  left.set_ylabel("import + load, s")
  left.tick_params(axis="x", rotation=30)
  right.bar(names, [startup[n]["rss_mb"] for n in names])
  right.set_ylabel("peak RSS, MB")
  right.tick_params(axis="x", rotation=30)
  benchmark_output.write(args.output, "compiled",
                         {"startup": startup, "action": actions, "ray": ray}, fig)
  return 0


if __name__ == "__main__":
  sys.exit(main())
