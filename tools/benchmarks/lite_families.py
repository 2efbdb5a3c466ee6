"""Every TF-Agents agent family on LiteRT: loads, validation figures and load time, per export.

For each export of `policy_zoo.agent_family_policies()` (TF-Agents' own agent
classes), in both batch modes, loads it with backend="lite" and an empty
conversion cache and reports: whether it loads (else why), the load time
(probe conversions in the converter child, which is started before the first
load, and validation), how new weights arrive (`lite_weights`), the worst
deterministic deviation, and the worst sampled distance against its threshold.
Writes lite_families.json into --output.

    bazel run //tools/benchmarks:lite_families -- [--output DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from tools.fixtures import tf_agents_keras  # noqa: E402

tf_agents_keras.select_keras_2()   # before TF-Agents resolves tf.keras

from policy_runtime.policies import SavedModelPyTFEagerPolicy  # noqa: E402
from policy_runtime.policies.saved_model import storage  # noqa: E402
from tools.benchmarks import benchmark_output  # noqa: E402
from tools.fixtures import policy_zoo  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  benchmark_output.add_output_argument(parser)
  args = parser.parse_args()
  root = tempfile.mkdtemp(prefix="lite_families_")
  rows = []
  print("| export | batch_time_steps | loads | load s | weights | worst deterministic | "
        "worst sampled / threshold |")
  print("|---|---|---|---:|---|---:|---|")
  for index, (name, build) in enumerate(policy_zoo.agent_family_policies().items()):
    path = os.path.join(root, name.replace("/", "__"))
    policy_zoo.save(build(), path)
    if index == 0:   # starts the converter child (a TF import), which no load should pay
      SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True, backend="auto",
                                lite_cache_dir=tempfile.mkdtemp(dir=root))
    for batch_time_steps in (True, False):
      start = time.perf_counter()
      try:
        policy = SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True, backend="lite",
                                           batch_time_steps=batch_time_steps,
                                           lite_cache_dir=tempfile.mkdtemp(dir=root))
      except ValueError as e:
        row = {"export": name, "batch_time_steps": batch_time_steps, "loads": False,
               "why": storage.first_line(e).split(": ", 1)[-1]}
        print(f"| {name} | {batch_time_steps} | no: {row['why']} | | | | |")
        rows.append(row)
        continue
      seconds = time.perf_counter() - start
      outputs = policy.lite_validation.outputs
      deterministic = [o.figure for o in outputs if o.kind == "deterministic"]
      sampled = [o for o in outputs if o.kind == "sampled"]
      worst = max(sampled, key=lambda o: o.figure / o.threshold, default=None)
      row = {"export": name, "batch_time_steps": batch_time_steps, "loads": True,
             "load_s": seconds, "lite_weights": policy.lite_weights,
             "worst_deterministic": max(deterministic, default=None),
             "worst_sampled": None if worst is None else {
                 "output": worst.path, "statistic": worst.statistic,
                 "distance": worst.figure, "threshold": worst.threshold}}
      rows.append(row)
      weights = "written" if policy.lite_weights.startswith("written") else "converted"
      det = "-" if not deterministic else f"{max(deterministic):.2g}"
      samp = "-" if worst is None else (f"{worst.path}: {worst.figure:.3f} / "
                                        f"{worst.threshold:.3f} ({worst.statistic})")
      print(f"| {name} | {batch_time_steps} | yes | {seconds:.2f} | {weights} | {det} | {samp} |",
            flush=True)
  os.makedirs(args.output, exist_ok=True)
  with open(os.path.join(args.output, "lite_families.json"), "w") as f:
    json.dump(rows, f, indent=1)
  print(f"\nwrote {args.output}/lite_families.json")


if __name__ == "__main__":
  main()
