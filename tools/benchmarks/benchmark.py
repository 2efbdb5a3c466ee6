"""Side-by-side latency of `action()`: TF-Agents vs ours vs the runtime floor.

For each policy (saved with PolicySaver at run time) and batch size, times in
one process, interleaved over rounds:
  * tf_agents: `tf_agents...SavedModelPyTFEagerPolicy.action` on numpy input,
  * ours:      `policies.SavedModelPyTFEagerPolicy.action` on the same input,
  * ours_st:   ours with `single_threaded_executor=True` (an explicit option),
  * floor:     the saved `action` concrete function called with pre-built
               tensors (`_call_flat`, no marshaling at all),
  * lite:      ours with `backend="lite"` (the LiteRT engine, on LiteRT's C API),
  * lite_interpreter: the same on ai-edge-litert's Python interpreter (public
               API), what runs where the native engine cannot,
and reports medians (us per call) and ratios. Also measures the marginal cost
of one more observation leaf and the steady-state memory of `action()`.

For the compute-bound policies (`PRECISION_POLICIES`: the Atari conv
Q-network, the 256x256 SAC actor) at batch 1, 32 and 256, per LiteRT
precision (fp32, int8) and thread count (1, 2): ours on lite, LiteRT's own
`invoke()` on the same model alone (the interpreter, inputs set once), and
tf (ours) and TF-Agents for reference, in one process, interleaved. A model
that int8 validation refuses is still timed (converted, not validated) and
marked refused, with the figure.
Writes benchmark.json and benchmark.png into --output.

    bazel run //tools:benchmark -- [--rounds 7] [--calls 200] [--output DIR]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import gc
import os
import random
import resource
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from tools.fixtures import tf_agents_keras  # noqa: E402

tf_agents_keras.select_keras_2()   # before TF-Agents resolves tf.keras

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tf_agents.policies import py_tf_eager_policy as tfa_eager  # noqa: E402
from tf_agents.specs import array_spec  # noqa: E402
from tf_agents.trajectories import time_step as ts  # noqa: E402
from tqdm import tqdm  # noqa: E402

from ai_edge_litert import interpreter as litert  # noqa: E402

from policy_runtime.policies import SavedModelPyTFEagerPolicy  # noqa: E402
from policy_runtime.policies.engines import lite as lite_engine  # noqa: E402
from policy_runtime.policies.runtime import lite_model, litert_library  # noqa: E402
from tools.benchmarks import benchmark_output  # noqa: E402
from tools.fixtures import policy_zoo  # noqa: E402

POLICIES = policy_zoo.BENCHMARK_POLICIES
LEAVES = {"mlp_q_1leaf": 1, "q_8leaves": 8, "q_32leaves": 32}
PRECISION_POLICIES = ("atari_conv_q", "sac_actor_256")
PRECISIONS = lite_model.PRECISIONS
THREADS = (1, 2)


@dataclasses.dataclass
class Row:
  policy: str
  batch: int
  tf_agents_us: float
  ours_us: float
  floor_us: float
  ours_st_us: float
  lite_us: float
  lite_interpreter_us: float

  @property
  def speedup(self) -> float:
    return self.tf_agents_us / self.ours_us

  @property
  def lite_speedup(self) -> float:
    return self.tf_agents_us / self.lite_us

  @property
  def lite_over_tf_path(self) -> float:
    return self.ours_us / self.lite_us

  @property
  def over_floor(self) -> float:
    return self.ours_us / self.floor_us


def _time_step(spec, batch, rng):
  outer = () if batch is None else (batch,)
  def sample(s):
    if np.issubdtype(s.dtype, np.integer):   # e.g. uint8 frames
      return rng.integers(0, 256, outer + s.shape).astype(s.dtype)
    return rng.standard_normal(outer + s.shape).astype(s.dtype)
  return ts.TimeStep(step_type=np.full(outer, ts.StepType.MID, np.int32),
                     reward=np.zeros(outer, np.float32), discount=np.ones(outer, np.float32),
                     observation=tf.nest.map_structure(sample, spec.observation))


def _per_call_us(fn, calls: int) -> float:
  start = time.perf_counter()
  for _ in range(calls):
    fn()
  return (time.perf_counter() - start) / calls * 1e6


def _contenders(path, batch):
  """Zero-argument callables doing the same step: tf_agents, ours, ours_st, floor, lite."""
  single = batch == 1
  ours = SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True, batch_time_steps=single)
  ours_st = SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True, batch_time_steps=single,
                                      single_threaded_executor=True)
  lite = SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True, batch_time_steps=single,
                                   backend="lite")
  os.environ[litert_library.LIBRARY_ENV] = ""     # no native engine for this one
  try:
    lite_interpreter = SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True,
                                                 batch_time_steps=single, backend="lite")
  finally:
    del os.environ[litert_library.LIBRARY_ENV]
  assert lite.lite_runtime == "native", lite.lite_runtime
  theirs = tfa_eager.SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True,
                                               batch_time_steps=single)
  rng = np.random.default_rng(0)
  step = _time_step(ours.time_step_spec, None if single else batch, rng)
  our_state = ours.get_initial_state(batch)
  their_state = theirs.get_initial_state(batch)

  concrete = ours._plan.function.concrete  # pylint: disable=protected-access
  batched_step = step if not single else tf.nest.map_structure(lambda a: a[None], step)
  flat = [tf.constant(a) for a in tf.nest.flatten((batched_step, our_state))]
  captures = concrete.captured_inputs
  return {
      "tf_agents": lambda: theirs.action(step, their_state),
      "ours": lambda: ours.action(step, our_state),
      "ours_st": lambda: ours_st.action(step, our_state),
      "floor": lambda: concrete._call_flat(flat, captures),  # pylint: disable=protected-access
      "lite": lambda: lite.action(step, our_state),
      "lite_interpreter": lambda: lite_interpreter.action(step, our_state),
  }


def _interleaved_medians(contenders: dict, rounds: int, calls: int, warmup: int) -> dict:
  """{name: median us per call} over `rounds` rounds, the contenders in a new order each."""
  for fn in contenders.values():
    _per_call_us(fn, warmup)
  samples = {k: [] for k in contenders}
  order = list(contenders)
  for _ in range(rounds):
    random.shuffle(order)
    for key in order:
      samples[key].append(_per_call_us(contenders[key], calls))
  return {k: float(np.median(v)) for k, v in samples.items()}


def _calls_per_round(batch: int, calls: int) -> int:
  """Fewer calls where one takes milliseconds (large batches, conv nets)."""
  return calls if batch == 1 else max(5, calls * 4 // batch)


def measure(path, name, batch, rounds, calls) -> Row:
  med = _interleaved_medians(_contenders(path, batch), rounds, calls, warmup=20)
  return Row(name, batch, med["tf_agents"], med["ours"], med["floor"], med["ours_st"],
             med["lite"], med["lite_interpreter"])


@dataclasses.dataclass
class PrecisionRow:
  policy: str
  batch: int
  precision: str
  threads: int
  lite_us: float
  invoke_us: float
  tf_us: float
  tf_agents_us: float
  validation: str          # "ok" plus the figure, or "refused: why"


def _lite_call(policy, path, single, precision, threads):
  """(ours on lite at this precision, its model, validation): refused int8 models are
  converted without validation, and their call is timed through the same plan."""
  try:
    lite = SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True, batch_time_steps=single,
                                     backend="lite", precision=precision, num_threads=threads)
  except ValueError as e:
    why = str(e).split("sampled inputs: ")[-1]
    # pylint: disable=protected-access
    engine = lite_engine.LiteEngine(policy._plan, policy._tf_call, policy._policy_specs,
                                    policy._source, None, precision, threads)
    model = engine.model_for(policy._switch.active.loaded)
    call = policy._plan.native_call_buffers
    return (lambda step, state: call(step, state, *model.call_args)), model, f"refused: {why}"
  report = lite.lite_validation
  figures = "; ".join(f"{p} {a:.2%} agree" for p, a in report.agreement.items()) or "; ".join(
      f"{o.path} {o.figure:.2g}/{o.threshold:g}" for o in report.outputs[:1])
  model = lite_model.model_of(lite._switch.active.call_args)  # pylint: disable=protected-access
  return lite.action, model, f"ok ({figures})"


def _invoke_alone(model, step_leaves, threads):
  """LiteRT's `invoke()` on the model, inputs set once (the runtime's own floor)."""
  interpreter = litert.Interpreter(model_content=model.flatbuffer, num_threads=threads)
  runner = interpreter.get_signature_runner(lite_model.SIGNATURE)
  details = runner.get_input_details()
  del runner
  for name, leaf in zip(model.input_names, step_leaves):
    index = details[name]["index"]
    interpreter.resize_tensor_input(index, list(np.shape(leaf)), strict=False)
  interpreter.allocate_tensors()
  for name, leaf in zip(model.input_names, step_leaves):
    interpreter.set_tensor(details[name]["index"], np.asarray(leaf, details[name]["dtype"]))
  return interpreter.invoke


def measure_precision(path, name, batch, rounds, calls) -> list:
  """PrecisionRows of one policy and batch: every precision and thread count, interleaved."""
  single = batch == 1
  ours = SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True, batch_time_steps=single)
  theirs = tfa_eager.SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True,
                                               batch_time_steps=single)
  step = _time_step(ours.time_step_spec, None if single else batch, np.random.default_rng(0))
  state = ours.get_initial_state(batch)
  their_state = theirs.get_initial_state(batch)
  contenders = {"tf": lambda: ours.action(step, state),
                "tf_agents": lambda: theirs.action(step, their_state)}
  validation = {}
  batched_step = step if not single else tf.nest.map_structure(lambda a: a[None], step)
  leaves = tf.nest.flatten((batched_step, state))
  slots = ours._plan.function.input_slots  # pylint: disable=protected-access
  by_slot = leaves if slots is None else [leaves[slots.index(i)] for i in range(len(leaves))]
  for precision in PRECISIONS:
    for threads in THREADS:
      act, model, validation[precision, threads] = _lite_call(ours, path, single, precision,
                                                              threads)
      contenders[f"lite {precision} {threads}"] = lambda act=act: act(step, state)
      contenders[f"invoke {precision} {threads}"] = _invoke_alone(model, by_slot, threads)
  med = _interleaved_medians(contenders, rounds, calls, warmup=5)
  return [PrecisionRow(name, batch, precision, threads, med[f"lite {precision} {threads}"],
                       med[f"invoke {precision} {threads}"], med["tf"], med["tf_agents"],
                       validation[precision, threads])
          for precision in PRECISIONS for threads in THREADS]


def precision_table(rows) -> str:
  fp32 = {(r.policy, r.batch, r.threads): r.lite_us for r in rows if r.precision == "fp32"}
  lines = ["| policy | batch | precision | threads | lite us | invoke() us | lite/invoke | "
           "tf us | TF-Agents us | fp32 lite/this | validation |",
           "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
  for r in rows:
    lines.append(f"| {r.policy} | {r.batch} | {r.precision} | {r.threads} | {r.lite_us:.0f} | "
                 f"{r.invoke_us:.0f} | {r.lite_us / r.invoke_us:.2f}x | {r.tf_us:.0f} | "
                 f"{r.tf_agents_us:.0f} | {fp32[r.policy, r.batch, r.threads] / r.lite_us:.2f}x | "
                 f"{r.validation} |")
  return "\n".join(lines)


def _rss_mb() -> float:
  with open("/proc/self/statm") as f:
    pages = int(f.read().split()[1])
  return pages * resource.getpagesize() / 2**20


def _rss_growth(fn, calls: int, desc: str) -> tuple:
  for _ in range(1000):
    fn()
  gc.collect()
  before = _rss_mb()
  for _ in tqdm(range(calls), desc=desc, unit="call", leave=False, mininterval=1):
    fn()
  gc.collect()
  return before, _rss_mb()


def steady_memory(path, calls: int) -> dict:
  """RSS after 1,000 and after `calls` action() calls, ours and the floor's."""
  contenders = _contenders(path, 1)
  before, after = _rss_growth(contenders["ours"], calls, "memory (ours)")
  floor_before, floor_after = _rss_growth(contenders["floor"], calls, "memory (floor)")
  return {"calls": calls, "rss_after_1000_mb": before, "rss_after_all_mb": after,
          "growth_mb": after - before, "floor_growth_mb": floor_after - floor_before}


def marginal_leaf_cost(rows) -> dict:
  """us per extra observation leaf, from the 1-, 8- and 32-leaf Q policies at batch 1."""
  by_policy = {r.policy: r for r in rows if r.batch == 1 and r.policy in LEAVES}
  if len(by_policy) < 2:
    return {}
  xs = np.array([LEAVES[p] for p in by_policy], float)
  def slope(values):
    return float(np.polyfit(xs, np.array(values, float), 1)[0])
  rs = list(by_policy.values())
  return {
      "tf_agents_us_per_leaf": slope([r.tf_agents_us for r in rs]),
      "ours_us_per_leaf": slope([r.ours_us for r in rs]),
      "floor_us_per_leaf": slope([r.floor_us for r in rs]),
      "lite_us_per_leaf": slope([r.lite_us for r in rs]),
      "ours_marshaling_us_per_leaf": slope([r.ours_us - r.floor_us for r in rs]),
      "tf_agents_marshaling_us_per_leaf": slope([r.tf_agents_us - r.floor_us for r in rs]),
  }


def lite_table(rows) -> str:
  lines = ["| policy | batch | LiteRT us | /floor | TF-Agents/LiteRT | our TF path/LiteRT | "
           "on the interpreter us | interpreter/native |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r.policy} | {r.batch} | {r.lite_us:.1f} | {r.lite_us / r.floor_us:.4f}x | "
                 f"{r.lite_speedup:.0f}x | {r.lite_over_tf_path:.1f}x | "
                 f"{r.lite_interpreter_us:.1f} | {r.lite_interpreter_us / r.lite_us:.2f}x |")
  return "\n".join(lines)


def table(rows) -> str:
  lines = ["| policy | batch | TF-Agents us | ours us | floor us | TF-Agents/ours | ours/floor "
           "| ours, single-threaded executor us | its /floor |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    lines.append(f"| {r.policy} | {r.batch} | {r.tf_agents_us:.0f} | {r.ours_us:.0f} | "
                 f"{r.floor_us:.0f} | {r.speedup:.2f}x | {r.over_floor:.2f}x | "
                 f"{r.ours_st_us:.0f} | {r.ours_st_us / r.floor_us:.2f}x |")
  return "\n".join(lines)


def plot(rows):
  fig, (left, right) = benchmark_output.figure(2, 11)
  leaf_rows = sorted((r for r in rows if r.batch == 1 and r.policy in LEAVES),
                     key=lambda r: LEAVES[r.policy])
  xs = [LEAVES[r.policy] for r in leaf_rows]
  series = (("tf_agents_us", "TF-Agents"), ("ours_us", "ours"),
            ("ours_st_us", "ours, single-threaded executor"), ("floor_us", "floor"),
            ("lite_us", "ours, backend='lite'"))
  if leaf_rows:
    for key, label in series:
      left.plot(xs, [getattr(r, key) for r in leaf_rows], "o-", label=label)
    left.set(yscale="log", xlabel="observation leaves (Q policy, batch 1)",
             ylabel="us per action()", title="latency vs number of leaves")
    left.legend()
  # Batch sizes: the MLP Q policy, else the first policy measured at several.
  by_policy = collections.defaultdict(list)
  for r in rows:
    by_policy[r.policy].append(r)
  name = "mlp_q_1leaf" if "mlp_q_1leaf" in by_policy else next(
      (p for p, rs in by_policy.items() if len(rs) > 1), None)
  if name is not None:
    batch_rows = sorted(by_policy[name], key=lambda r: r.batch)
    bs = [r.batch for r in batch_rows]
    for key, label in series:
      right.plot(bs, [getattr(r, key) for r in batch_rows], "o-", label=label)
    right.set(xscale="log", yscale="log", xlabel=f"batch size ({name})",
              ylabel="us per action()", title="latency vs batch size")
    right.legend()
  return fig


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--calls", type=int, default=200)
  parser.add_argument("--batches", default="1,16,256")
  parser.add_argument("--policies", default=",".join(POLICIES))
  parser.add_argument("--memory-calls", type=int, default=200_000)
  parser.add_argument("--precision-rounds", type=int, default=7,
                      help="rounds of the precision section (0: skip it)")
  benchmark_output.add_output_argument(parser)
  args = parser.parse_args()

  batches = [int(b) for b in args.batches.split(",")]
  names = args.policies.split(",")
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    paths = {}
    for name in names:
      paths[name] = os.path.join(tmp, name)
      policy_zoo.save(POLICIES[name](), paths[name])
    for name in tqdm(names, desc="policies"):
      for batch in policy_zoo.BENCHMARK_BATCHES.get(name, batches):
        rows.append(measure(paths[name], name, batch, args.rounds,
                            _calls_per_round(batch, args.calls)))
    precision_rows = []
    for name in [n for n in names if n in PRECISION_POLICIES] if args.precision_rounds else []:
      for batch in policy_zoo.BENCHMARK_BATCHES.get(name, batches):
        precision_rows += measure_precision(paths[name], name, batch, args.precision_rounds,
                                            _calls_per_round(batch, args.calls))
    memory = steady_memory(paths[names[0]], args.memory_calls) if args.memory_calls else {}
  leaf = marginal_leaf_cost(rows)

  print(table(rows))
  print("\nLiteRT engine (backend='lite'):\n" + lite_table(rows))
  if precision_rows:
    print("\nCompute-bound policies, per LiteRT precision and threads:\n" +
          precision_table(precision_rows))
  if leaf:
    print("\nmarginal cost of one more observation leaf (batch 1, us): " +
          ", ".join(f"{k} {v:.1f}" for k, v in leaf.items()))
  if memory:
    print(f"\nsteady memory ({names[0]}, batch 1): RSS {memory['rss_after_1000_mb']:.1f} MB after "
          f"1,000 calls, {memory['rss_after_all_mb']:.1f} MB after {memory['calls']:,} "
          f"(growth {memory['growth_mb']:+.1f} MB; the floor alone grows "
          f"{memory['floor_growth_mb']:+.1f} MB over as many calls)")
  result = {"rows": [dataclasses.asdict(r) | {"tf_agents_over_ours": r.speedup,
                                              "ours_over_floor": r.over_floor,
                                              "tf_agents_over_lite": r.lite_speedup,
                                              "ours_over_lite": r.lite_over_tf_path}
                     for r in rows],
            "precision": [dataclasses.asdict(r) for r in precision_rows],
            "marginal_leaf_cost": leaf, "memory": memory,
            "rounds": args.rounds, "precision_rounds": args.precision_rounds,
            "calls_per_round": args.calls}
  benchmark_output.write(args.output, "benchmark", result, plot(rows))


if __name__ == "__main__":
  main()
