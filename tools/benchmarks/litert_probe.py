"""LiteRT's public C API against the interpreter the lite engine uses, per run (not a test).

    bazel run //tools/benchmarks:litert_probe

Compiles the embedded MLP Q policy and an LSTM actor (`compile_policy`), then
times, at batch 1, 2 and 16: a bare `LiteRtRunCompiledModel` on host-memory
buffers (`tools/benchmarks/litert_probe.cc`, which loads the installed ai-edge-litert's
`libLiteRt.so` at run time), passing its input buffers on every run and
passing nulls once a first run bound them (as the native engine does), and
the interpreter's public `invoke()` on the same flatbuffer. A batch the C API cannot run says why
(e.g. `outputs_not_resized`: after the inputs are resized, the compiled model
still reports the outputs at another batch).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import subprocess
import sys
import tempfile
import timeit

from tools.fixtures import tf_agents_keras

tf_agents_keras.select_keras_2()   # before TF-Agents resolves tf.keras

from policy_runtime.policies import compile_policy  # noqa: E402
from policy_runtime.policies.runtime import compiled_format
from policy_runtime.policies.runtime import lite_model, litert_library  # noqa: E402
from tools.cli import policy_cli  # noqa: E402
from tools.fixtures import policy_zoo  # noqa: E402

PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "litert_probe_cc")
BATCHES = (1, 2, 16)


def library_path() -> str:
  """The libLiteRt.so the native engine loads (policies.runtime.litert_library)."""
  library = litert_library.find()
  if library.path is None:
    raise SystemExit(f"litert_probe: no libLiteRt.so to probe: {library.reason}")
  return library.path


def interpreter_us(files: compiled_format.CompiledFiles, batch: int, calls: int) -> float:
  """Median us per public `invoke()` over 7 rounds, on an interpreter the engines'
  LiteModel prepared for `batch` on the interpreter."""
  signature = files.policy["signature"]
  model = lite_model.LiteModel(files.flatbuffer, signature["input_names"],
                               signature["output_names"], batch, native=False)
  interpreter = model.lease(batch)[4]
  timeit.timeit(interpreter.invoke, number=calls)   # warm-up round, not counted
  rounds = sorted(timeit.timeit(interpreter.invoke, number=calls) / calls * 1e6
                  for _ in range(7))
  return rounds[3]


def c_api(model: str, batch: int, calls: int) -> dict:
  """The probe's `key=value` report for one model and batch."""
  run = subprocess.run([PROBE, library_path(), model, str(batch), str(calls)],
                       capture_output=True, text=True, timeout=600)
  lines = [l for l in run.stdout.splitlines() if l.startswith("status=")]
  if not lines:
    return {"status": f"crashed (exit {run.returncode})"}
  return dict(part.split("=", 1) for part in lines[-1].split())


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--calls", type=int, default=20000, help="runs per timed round")
  args = parser.parse_args(argv)
  version = importlib.metadata.version("ai-edge-litert")
  print(f"ai-edge-litert {version}: {library_path()}")
  work = tempfile.mkdtemp(prefix="litert_probe_")
  lstm = os.path.join(work, "lstm_export")
  policy_zoo.save(policy_zoo.lstm_actor_policy(greedy=True), lstm)
  models = {"mlp_q (embedded)": policy_cli.DEFAULT_POLICY, "lstm_actor": lstm}
  print("| policy | batch | C API run us | inputs bound us | interpreter invoke() us | "
        "bound / interpreter |")
  print("|---|---:|---:|---:|---:|---:|")
  for i, (name, export) in enumerate(models.items()):
    files = compiled_format.read(compile_policy(export, os.path.join(work, str(i))).path)
    flatbuffer_path = os.path.join(files.directory, compiled_format.FLATBUFFER)
    for batch in BATCHES:
      report = c_api(flatbuffer_path, batch, args.calls)
      ours = interpreter_us(files, batch, args.calls)
      if report.get("status") == "ok":
        c_us, bound_us = float(report["us_per_run"]), float(report["us_per_run_bound"])
        print(f"| {name} | {batch} | {c_us:.2f} | {bound_us:.2f} | {ours:.2f} | "
              f"{bound_us / ours:.2f}x |")
      else:
        detail = " ".join(f"{k}={v}" for k, v in report.items())
        print(f"| {name} | {batch} | fails: {detail} | - | {ours:.2f} | - |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
