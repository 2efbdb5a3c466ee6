"""Our LiteRT engine against the runtimes a user would pick instead: ONNX Runtime and OpenVINO.

For the compute-bound policies of the benchmark (the Atari conv Q-network, the
256x256 SAC actor) at batch 1, 32 and 256, times in one process, interleaved
over rounds, with 1 and 2 threads each:
  * lite:      ours, `backend="lite"`, `action()` on numpy time steps (fp32 and
               int8; int8 models that validation refuses are timed unvalidated);
  * invoke:    LiteRT's own `invoke()` on our fp32 model, inputs set once;
  * ort:       ONNX Runtime on the saved `action` signature converted with
               tf2onnx, inputs and outputs bound once (IO binding);
  * openvino:  OpenVINO on the same ONNX model, one infer request with its
               inputs set once, at fp32 (`INFERENCE_PRECISION_HINT=f32`) and at
               the CPU's default precision (bf16 where the CPU has it).
The peers' calls are their runtime's floor (no marshaling of time steps), so
they are compared with both `invoke()` and our full `action()`. Each peer's
actions are compared with TF's on the timed batch (greedy agreement, or max
abs difference). Writes peers.json into --output.

The peers live in their own venv (.venv-peers: requirements.txt plus
tools/benchmarks/requirements-peers.txt); this binary re-executes itself there:

    bash tools/setup.sh --peers
    bazel run //tools/benchmarks:peers -- [--rounds 15] [--output DIR]
"""

# pylint: disable=protected-access  (the benchmark's helpers, and our engine's)
from __future__ import annotations

import importlib.util
import os
import sys

_PEERS = ("onnxruntime", "openvino", "tf2onnx")
_REEXEC = "POLICY_RUNTIME_PEERS_REEXEC"


def _reexec_in_peers_venv() -> None:
  """Runs this file again under .venv-peers/bin/python, with this process's own code
  (the runfiles) on its path but not this interpreter's packages."""
  workspace = os.environ.get("BUILD_WORKSPACE_DIRECTORY", os.getcwd())
  python = os.path.join(workspace, ".venv-peers", "bin", "python")
  fix = f"run `bash tools/setup.sh --peers` in {workspace}"
  if os.environ.get(_REEXEC):
    sys.exit(f"peers: {python} lacks one of {', '.join(_PEERS)}: {fix}")
  if not os.path.exists(python):
    sys.exit(f"peers: {python} is missing: {fix}")
  interpreter = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
  own = [p for p in sys.path if p and "site-packages" not in p and
         not any(os.path.realpath(p).startswith(prefix) for prefix in interpreter)]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(own), **{_REEXEC: "1"})
  os.execve(python, [python, os.path.abspath(__file__)] + sys.argv[1:], env)


if not all(importlib.util.find_spec(name) for name in _PEERS):
  _reexec_in_peers_venv()

# pylint: disable=wrong-import-position
import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from tools.benchmarks import benchmark  # noqa: E402  (selects Keras 2 first)

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import openvino as ov  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_probability  # noqa: E402,F401  (tf2onnx needs TFP's ops registered)
import tf2onnx  # noqa: E402
from onnx import TensorProto  # noqa: E402

from policy_runtime.policies import SavedModelPyTFEagerPolicy  # noqa: E402
from tools.benchmarks import benchmark_output  # noqa: E402
from tools.fixtures import policy_zoo  # noqa: E402

BATCHES = (1, 32, 256)
THREADS = (1, 2)


def _broadcast_args(ctx, node, name, args):  # pylint: disable=unused-argument
  """tf2onnx handler for TF's BroadcastArgs(s0, s1): the shape of zeros(s0) + zeros(s1)."""
  out_dtype = ctx.get_dtype(node.output[0])
  zeros = []
  for shape in node.input:
    as_int64 = ctx.make_node("Cast", [shape], attr={"to": TensorProto.INT64}).output[0]
    zeros.append(ctx.make_node("ConstantOfShape", [as_int64]).output[0])
  total = ctx.make_node("Add", zeros).output[0]
  ctx.replace_inputs(node, [ctx.make_node("Shape", [total]).output[0]])
  node.type = "Cast"
  for key in list(node.attr):
    del node.attr[key]
  node.set_attr("to", out_dtype)


def to_onnx(path: str) -> tuple:
  """(ONNX model bytes, input names in the signature's keyword order) of `path`'s `action`."""
  loaded = tf.saved_model.load(path)   # kept alive: the signature reads its variables
  action = loaded.signatures["action"]
  specs = action.structured_input_signature[1]
  keys = sorted(specs)
  signature = [tf.TensorSpec(specs[k].shape, specs[k].dtype, name=k) for k in keys]

  @tf.function(input_signature=signature)
  def flat_action(*args):
    return action(**dict(zip(keys, args)))

  model, _ = tf2onnx.convert.from_function(
      flat_action, input_signature=signature, opset=17,
      custom_op_handlers={"BroadcastArgs": (_broadcast_args, [])})
  del loaded
  return model.SerializeToString(), keys


def _feeds(keys: list, step) -> dict:
  """The signature's keyword inputs (`arg_0_observation`, ...) from a batched TimeStep."""
  fields = {k: k[len("arg_0_"):] for k in keys}
  if not all(k.startswith("arg_0_") and f in step._fields for k, f in fields.items()):
    raise ValueError(f"peers: only policies whose action takes a time step alone, got inputs "
                     f"{keys}")
  return {k: np.ascontiguousarray(getattr(step, f)) for k, f in fields.items()}


def _ort_call(model: bytes, feeds: dict, threads: int):
  options = ort.SessionOptions()
  options.intra_op_num_threads = threads
  options.inter_op_num_threads = 1
  # Idle workers sleep instead of spinning, as LiteRT's and OpenVINO's do, so that one
  # contender's pool does not take the cores from the next one in the interleaved rounds.
  options.add_session_config_entry("session.intra_op.allow_spinning", "0")
  session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
  binding = session.io_binding()
  for name, value in feeds.items():
    binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value))
  for output in session.get_outputs():
    binding.bind_output(output.name)
  session.run_with_iobinding(binding)
  result = binding.copy_outputs_to_cpu()[0]
  return (lambda: session.run_with_iobinding(binding)), result


def _openvino_call(model: bytes, feeds: dict, threads: int, precision):
  core = ov.Core()
  config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
  if precision is not None:
    config["INFERENCE_PRECISION_HINT"] = precision
  compiled = core.compile_model(core.read_model(model), "CPU", config)
  request = compiled.create_infer_request()
  for port in compiled.inputs:
    request.set_tensor(port, ov.Tensor(feeds[port.any_name.split(":")[0]]))
  request.infer()
  result = request.get_output_tensor(0).data.copy()
  used = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()   # bf16, f16, f32
  return request.infer, result, {"f16": "fp16", "f32": "fp32"}.get(used, used)


def _accuracy(reference: np.ndarray, got: np.ndarray) -> str:
  if np.issubdtype(reference.dtype, np.integer):
    return f"{np.mean(reference.reshape(-1) == got.reshape(-1)):.2%} of actions equal TF's"
  return f"max |diff| to TF {np.max(np.abs(got.astype(np.float64) - reference)):.1e}"


def measure(path: str, batch: int, rounds: int, calls: int) -> dict:
  """{contender: {us, accuracy}} for one policy and batch, interleaved."""
  single = batch == 1
  ours = SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True, batch_time_steps=single)
  step = benchmark._time_step(ours.time_step_spec, None if single else batch,
                              np.random.default_rng(0))
  state = ours.get_initial_state(batch)
  batched = step if not single else tf.nest.map_structure(lambda a: a[None], step)
  reference = np.asarray(ours.action(step, state).action).reshape(batch, -1)
  model, keys = to_onnx(path)
  feeds = _feeds(keys, batched)
  leaves = tf.nest.flatten((batched, state))
  slots = ours._plan.function.input_slots
  by_slot = leaves if slots is None else [leaves[slots.index(i)] for i in range(len(leaves))]
  contenders, accuracy = {}, {}
  for threads in THREADS:
    for precision in ("fp32", "int8"):
      act, converted, verdict = benchmark._lite_call(ours, path, single, precision, threads)
      key = f"lite {precision} {threads}"
      contenders[key] = lambda act=act: act(step, state)
      accuracy[key] = verdict
      if precision == "fp32":
        contenders[f"invoke fp32 {threads}"] = benchmark._invoke_alone(converted, by_slot,
                                                                       threads)
        accuracy[f"invoke fp32 {threads}"] = "our fp32 model"
    key = f"ort fp32 {threads}"
    contenders[key], result = _ort_call(model, feeds, threads)
    accuracy[key] = _accuracy(reference, result.reshape(batch, -1))
    for hint in ("f32", None):   # fp32, then the CPU's default (bf16 where it has it)
      call, result, used = _openvino_call(model, feeds, threads, hint)
      key = f"openvino {used} {threads}"
      if key in contenders:        # the default is fp32 here: timed once
        continue
      contenders[key] = call
      accuracy[key] = _accuracy(reference, result.reshape(batch, -1))
  medians = benchmark._interleaved_medians(contenders, rounds, calls, warmup=5)
  return {key: {"us": medians[key], "accuracy": accuracy[key]} for key in contenders}


def table(results: dict) -> str:
  lines = ["| policy | batch | contender | threads | us | ours lite fp32 / this | accuracy |",
           "|---|---:|---|---:|---:|---:|---|"]
  for (name, batch), row in results.items():
    for key, value in row.items():
      runtime, precision, threads = key.rsplit(" ", 2)
      ours = row[f"lite fp32 {threads}"]["us"]
      lines.append(f"| {name} | {batch} | {runtime} {precision} | {threads} | "
                   f"{value['us']:.0f} | {ours / value['us']:.2f}x | {value['accuracy']} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=15)
  parser.add_argument("--calls", type=int, default=200)
  parser.add_argument("--policies", default=",".join(benchmark.PRECISION_POLICIES))
  benchmark_output.add_output_argument(parser)
  args = parser.parse_args()
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    for name in args.policies.split(","):
      path = os.path.join(tmp, name)
      policy_zoo.save(benchmark.POLICIES[name](), path)
      for batch in BATCHES:
        results[name, batch] = measure(path, batch, args.rounds,
                                       benchmark._calls_per_round(batch, args.calls))
  print(table(results))
  os.makedirs(args.output, exist_ok=True)
  with open(os.path.join(args.output, "peers.json"), "w") as f:
    json.dump({"rows": [{"policy": n, "batch": b, "contenders": row}
                        for (n, b), row in results.items()],
               "rounds": args.rounds, "machine": benchmark_output.machine(),
               "versions": {"onnxruntime": ort.__version__, "openvino": ov.__version__,
                            "tf2onnx": tf2onnx.__version__}}, f, indent=1)
  print(f"\nwrote {args.output}/peers.json")


if __name__ == "__main__":
  main()
