"""Pushed weights: how long until `action()` runs on them, per engine, and what it costs per call.

For each policy (saved with PolicySaver at run time: the MLP Q policy, SAC's
256x256 actor (greedy), the Atari conv Q network on uint8 frames), in one
process:
  * push_to_action: a push as TF-Agents' actors do it (`ReverbVariableContainer.update`
    runs a `tf.function` that assigns every variable; here the same function on
    values already pulled), then the first `action()`, which must run on the
    new weights. Contenders: TF-Agents' `SavedModelPyTFEagerPolicy` (its
    variables are the graph's), ours on "tf" and on "lite". Medians over
    `--pushes` pushes alternating two weight sets, contenders interleaved.
  * lite_update_before: what following new weights cost on LiteRT before
    this design (and still costs where `lite_weights` says "converted"): a
    conversion of the copy's graph with the weights frozen in plus the
    validation, as `update_from_checkpoint` ran them. Median of 3.
  * lite_load_s: loading on LiteRT with an empty conversion cache (the probe
    conversions that learn where the weights go, and the validation).
  * action() on LiteRT at batch 1 and 256: the model pushes write into (the
    probe conversion's structure, `lite_weights`) against the model converted
    directly from the same weights (what the engine ran before), the same
    native call path, interleaved rounds.
Writes push.json and push.png into --output.

    bazel run //tools/benchmarks:push_benchmark -- [--pushes 30] [--rounds 7] [--output DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from tools.fixtures import tf_agents_keras  # noqa: E402

tf_agents_keras.select_keras_2()   # before TF-Agents resolves tf.keras

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tf_agents.policies import py_tf_eager_policy as tfa_eager  # noqa: E402
from tf_agents.trajectories import time_step as ts  # noqa: E402
from tf_agents.utils import common  # noqa: E402

from policy_runtime.policies import SavedModelPyTFEagerPolicy  # noqa: E402
from policy_runtime.policies.runtime import lite_model  # noqa: E402
from tools.benchmarks import benchmark_output  # noqa: E402
from tools.fixtures import policy_zoo  # noqa: E402

POLICIES = {
    "mlp_q": policy_zoo.q_mlp_policy,
    "sac_actor_256": policy_zoo.sac_actor_policy,
    "atari_conv_q": policy_zoo.atari_q_policy,
}


@common.function
def _push(variables, values):
  """What `ReverbVariableContainer.update` runs on the values it pulled."""
  for variable, value in zip(tf.nest.flatten(variables), tf.nest.flatten(values)):
    variable.assign(value)


def _observations(spec, count: int, rng: np.random.Generator) -> np.ndarray:
  if spec.dtype == np.uint8:
    return rng.integers(0, 256, (count,) + spec.shape, dtype=np.uint8)
  return rng.standard_normal((count,) + spec.shape).astype(spec.dtype)


def _median_us(samples) -> float:
  return statistics.median(samples) * 1e6


def _push_to_action(contenders: dict, step, pushes: int) -> dict:
  """{name: median seconds from the start of a push to the end of the first action()}."""
  sets = {}
  for name, (policy, variables) in contenders.items():
    first = [v.numpy() for v in variables]
    sets[name] = (first, [v * np.float32(-0.5) for v in first])
  times = {name: [] for name in contenders}
  for k in range(pushes):
    for name, (policy, variables) in contenders.items():
      values = sets[name][k % 2]
      start = time.perf_counter()
      _push(variables, values)
      policy.action(step)
      times[name].append(time.perf_counter() - start)
  return {name: _median_us(t[1:]) for name, t in times.items()}   # the first one traces


def _lite_update_before(policy) -> float:
  """Seconds to convert the active copy's graph with its weights, and validate it."""
  engine = policy._engine  # pylint: disable=protected-access
  loaded = policy._switch.active.loaded  # pylint: disable=protected-access
  times = []
  for _ in range(3):
    engine.cache.directory = tempfile.mkdtemp()   # a miss every time, as for new weights
    start = time.perf_counter()
    model = engine._converted_model(loaded)  # pylint: disable=protected-access
    engine.validate(model, loaded)
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _call_times(policy, batch: int, rounds: int, calls: int, rng) -> dict:
  """Median us per native call at `batch`: the written model vs the directly converted one."""
  engine = policy._engine  # pylint: disable=protected-access
  active = policy._switch.active  # pylint: disable=protected-access
  models = {"written": lite_model.model_of(active.call_args),
            "converted": engine._converted_model(active.loaded)}  # pylint: disable=protected-access
  spec = policy.time_step_spec
  step = ts.TimeStep(np.ones(batch, np.int32), np.zeros(batch, np.float32),
                     np.ones(batch, np.float32), _observations(spec.observation, batch, rng))
  state = policy.get_initial_state(batch)
  times = {name: [] for name in models}
  for _ in range(rounds):
    for name, model in models.items():
      engine.call(step, state, *model.call_args)   # warm the runner for this batch
      start = time.perf_counter()
      for _ in range(calls):
        engine.call(step, state, *model.call_args)
      times[name].append((time.perf_counter() - start) / calls)
  return {name: _median_us(t) for name, t in times.items()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--pushes", type=int, default=30)
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--calls", type=int, default=200)
  parser.add_argument("--policies", default=",".join(POLICIES))
  benchmark_output.add_output_argument(parser)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  root = tempfile.mkdtemp(prefix="push_benchmark_")
  result = {}
  for name in args.policies.split(","):
    path = os.path.join(root, name)
    policy_zoo.save(POLICIES[name](), path)
    theirs = tfa_eager.SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True)
    ours_tf = SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True)
    start = time.perf_counter()   # a conversion cache miss: the probe conversions run
    ours_lite = SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True, backend="lite",
                                          lite_cache_dir=tempfile.mkdtemp(dir=root))
    lite_load_s = time.perf_counter() - start
    batched = SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True, backend="lite",
                                        batch_time_steps=False)
    step = ts.restart(_observations(ours_tf.time_step_spec.observation, 1, rng)[0])
    push = _push_to_action({"tf_agents": (theirs, theirs.variables()),
                            "ours_tf": (ours_tf, ours_tf.variables()),
                            "ours_lite": (ours_lite, ours_lite.variables())}, step, args.pushes)
    update_before = _lite_update_before(ours_lite)
    calls = {batch: _call_times(batched, batch, args.rounds,
                                max(args.calls // batch, 5) if batch > 1 else args.calls, rng)
             for batch in (1, 256)}
    weights = sum(int(np.prod(v.shape)) for v in ours_tf.variables())
    result[name] = {
        "weights": weights, "lite_weights": ours_lite.lite_weights, "lite_load_s": lite_load_s,
        "push_to_action_us": push, "lite_update_before_s": update_before,
        "lite_call_us": {str(b): c for b, c in calls.items()},
    }
    print(f"\n{name} ({weights:,} weights; lite: {ours_lite.lite_weights}; lite load "
          f"{lite_load_s:.2f} s)")
    print(f"  push -> first action(): TF-Agents {push['tf_agents']:,.0f} us, ours tf "
          f"{push['ours_tf']:,.0f} us, ours lite {push['ours_lite']:,.0f} us")
    print(f"  lite before (convert + validate): {update_before * 1e3:,.0f} ms -> now "
          f"1/{update_before * 1e6 / push['ours_lite']:,.0f} of it")
    for batch, c in calls.items():
      print(f"  lite action() at batch {batch}: written model {c['written']:,.1f} us, converted "
            f"model {c['converted']:,.1f} us ({c['written'] / c['converted']:.3f}x)")
  fig, axes = benchmark_output.figure(2, 11)
  names = list(result)
  x = np.arange(len(names))
  for i, key in enumerate(("tf_agents", "ours_tf", "ours_lite")):
    axes[0].bar(x + (i - 1) * 0.27, [result[n]["push_to_action_us"][key] / 1e3 for n in names],
                0.27, label=key)
  axes[0].bar(x + 0.81, [result[n]["lite_update_before_s"] * 1e3 for n in names], 0.27,
              label="lite before (convert + validate)")
  axes[0].set_yscale("log")
  axes[0].set_ylabel("ms from push to first action()")
  axes[0].set_xticks(x + 0.27, names)
  axes[0].legend(fontsize=7)
  for i, batch in enumerate(("1", "256")):
    axes[1].bar(x + (i - 0.5) * 0.4,
                [result[n]["lite_call_us"][batch]["written"] / result[n]["lite_call_us"][batch]
                 ["converted"] for n in names], 0.4, label=f"batch {batch}")
  axes[1].axhline(1.0, color="black", linewidth=0.8)
  axes[1].set_ylabel("lite action(): written / converted model")
  axes[1].set_xticks(x, names)
  axes[1].legend(fontsize=7)
  benchmark_output.write(args.output, "push", result, fig)


if __name__ == "__main__":
  main()
