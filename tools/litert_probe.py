"""LiteRT's public C API against the interpreter the lite engine uses, per run (not a test).

    bazel run //tools:litert_probe

Compiles the embedded MLP Q policy and an LSTM actor (`compile_policy`), then
times, at batch 1, 2 and 16: a bare `LiteRtRunCompiledModel` on host-memory
buffers (`tools/litert_probe.cc`, which loads the installed ai-edge-litert's
`libLiteRt.so` at run time) and the interpreter's public `invoke()` on the
same flatbuffer (no tensor views held). A batch the C API cannot run says why
(e.g. `outputs_not_resized`: after the inputs are resized, the compiled model
still reports the outputs at another batch).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import tempfile
import timeit

from tools import tf_agents_keras

tf_agents_keras.select_keras_2()   # before TF-Agents resolves tf.keras

from ai_edge_litert import interpreter as litert  # noqa: E402

from policies import compile_policy  # noqa: E402
from policies.compiled_format import FLATBUFFER  # noqa: E402
from tools import policy_cli, policy_zoo  # noqa: E402

PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "litert_probe_cc")
BATCHES = (1, 2, 16)


def library_path() -> str:
  """The installed ai-edge-litert's libLiteRt.so (found without importing TensorFlow)."""
  spec = importlib.util.find_spec("ai_edge_litert")
  return os.path.join(list(spec.submodule_search_locations)[0], "libLiteRt.so")


def interpreter_us(flatbuffer: bytes, batch: int, calls: int) -> float:
  """Median us per public `invoke()` over 7 rounds, inputs resized to `batch`."""
  interpreter = litert.Interpreter(model_content=flatbuffer, num_threads=1)
  for detail in interpreter.get_input_details():
    signature = list(detail["shape_signature"])
    if signature and signature[0] < 0:
      interpreter.resize_tensor_input(detail["index"], [batch] + signature[1:], strict=True)
  interpreter.allocate_tensors()
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
  print("| policy | batch | C API run us | interpreter invoke() us | C API / interpreter |")
  print("|---|---:|---:|---:|---:|")
  for name, export in models.items():
    out = compile_policy(export, os.path.join(work, name.split()[0])).path
    flatbuffer_path = os.path.join(out, FLATBUFFER)
    with open(flatbuffer_path, "rb") as f:
      flatbuffer = f.read()
    for batch in BATCHES:
      report = c_api(flatbuffer_path, batch, args.calls)
      ours = interpreter_us(flatbuffer, batch, args.calls)
      if report.get("status") == "ok":
        c_us = float(report["us_per_run"])
        print(f"| {name} | {batch} | {c_us:.2f} | {ours:.2f} | {c_us / ours:.2f}x |")
      else:
        detail = " ".join(f"{k}={v}" for k, v in report.items())
        print(f"| {name} | {batch} | fails: {detail} | {ours:.2f} | - |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
