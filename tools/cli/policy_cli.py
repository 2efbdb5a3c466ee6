"""Command line for saved TF-Agents policies.

    policy_cli inspect [DIR]   specs, signatures, train step, metadata, op families
    policy_cli run [DIR]       drive the policy in its Gymnasium environment; average
                               return against a random policy, per-step latency
    policy_cli evaluate [DIR]  many seeded episodes on Ray workers (local or a
                               cluster); mean return with its 95% CI, steps/s
    policy_cli compile DIR OUT compile the export for acting without TensorFlow
                               (policies.runtime.compiled.CompiledPolicy); run and evaluate
                               take a compiled OUT as DIR

Without DIR, inspect, run and evaluate use the embedded default: a CartPole policy trained by
tools/fixtures/train_cartpole.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.python.util import nest  # noqa: E402
from tqdm import tqdm  # noqa: E402

from policy_runtime.policies import SavedModelPyTFEagerPolicy  # noqa: E402
from policy_runtime.policies import compiled, compiled_tf_agents  # noqa: E402
from policy_runtime.policies.runtime import compiled_format
from policy_runtime.policies import episodes as episodes_lib  # noqa: E402
from policy_runtime.policies.saved_model import graph_audit  # noqa: E402

DEFAULT_POLICY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default_policy")


def _format_spec_nest(spec_nest, indent="    ") -> str:
  lines = []
  for path, spec in nest.flatten_with_joined_string_paths(spec_nest):
    extra = ""
    if hasattr(spec, "minimum"):
      extra = f" in [{np.min(spec.minimum)}, {np.max(spec.maximum)}]"
    lines.append(f"{indent}{path or '.'}: {np.dtype(spec.dtype).name}{list(spec.shape)}{extra}")
  return "\n".join(lines) if lines else f"{indent}(none)"


def inspect(model_dir: str, allow_unsafe_ops: bool = False) -> None:
  policy = SavedModelPyTFEagerPolicy(model_dir, load_specs_from_pbtxt=True,
                                     allow_unsafe_ops=allow_unsafe_ops, backend="auto")
  print(f"policy: {_describe(model_dir)}")
  print(f"  loaded from: {policy.load_mode}")
  print(f"  LiteRT: {_lite_summary(policy)}")
  for name in ("time_step_spec", "action_spec", "policy_state_spec", "info_spec"):
    print(f"  {name}:\n{_format_spec_nest(getattr(policy, name))}")
  print("  signatures:")
  for name, function in sorted(policy.signatures.items()):
    inputs = ", ".join(f"{k}: {v.dtype.name}{v.shape.as_list()}"
                       for k, v in sorted(function.structured_input_signature[1].items()))
    outputs = ", ".join(sorted(function.structured_outputs))
    print(f"    {name}({inputs}) -> {{{outputs}}}")
  print(f"  train step: {policy.get_train_step()}")
  print("  metadata:")
  for key, value in sorted(policy.get_metadata().items()):
    print(f"    {key}: {value!r}")
  print("  op families used by the policy's functions:")
  for family, ops in sorted(policy.op_families().items()):
    print(f"    {family}: {', '.join(sorted(ops))}")


def _lite_summary(policy) -> str:
  """Whether the policy runs on LiteRT, with the validation figures, or why not."""
  if policy.backend != "lite":
    return f"no, runs on TF: {policy.backend_reason}"
  parts = []
  for check in policy.lite_validation.outputs:
    if check.kind == "sampled":
      parts.append(f"{check.path} sampled ({check.statistic} {check.figure:.3f} <= "
                   f"{check.threshold:.3f})")
    else:
      parts.append(f"{check.path} deterministic (max |lite - tf| {check.figure:.2g})")
  return "yes; " + ", ".join(parts)


def _describe(model_dir: str) -> str:
  if os.path.abspath(model_dir) == DEFAULT_POLICY:
    return "embedded default (CartPole, trained by tools/fixtures/train_cartpole.py)"
  return model_dir


def _average_return(env, policy, episodes: int, seed: int, desc: str, latencies=None):
  returns = [episodes_lib.run_episode(env, policy, seed + i, latencies).total_return
             for i in tqdm(range(episodes), desc=desc, unit="episode", leave=False)]
  return float(np.mean(returns))


def run(model_dir: str, env_name: str | None, episodes: int, seed: int,
        allow_unsafe_ops: bool = False, backend: str = "tf", precision: str = "fp32",
        num_threads: int = 1) -> dict:
  from tf_agents.policies import random_py_policy

  if compiled_format.is_compiled(model_dir):
    loaded = compiled.CompiledPolicy(model_dir, num_threads=num_threads)
    policy = compiled_tf_agents.as_py_policy(loaded)
    engine = f"compiled LiteRT {loaded.precision}"
  else:
    policy = SavedModelPyTFEagerPolicy(model_dir, load_specs_from_pbtxt=True,
                                       allow_unsafe_ops=allow_unsafe_ops, backend=backend,
                                       precision=precision, num_threads=num_threads)
    engine = "tf" if policy.backend == "tf" else f"LiteRT {policy.precision}"
  env_name = episodes_lib.env_id_for(policy, env_name)
  env = episodes_lib.load_env(env_name)
  random_policy = random_py_policy.RandomPyPolicy(policy.time_step_spec, policy.action_spec,
                                                  seed=seed)
  latencies: list = []
  start = time.perf_counter()
  policy_return = _average_return(env, policy, episodes, seed, "policy", latencies)
  seconds = time.perf_counter() - start
  random_return = _average_return(env, random_policy, episodes, seed, "random policy")
  us = np.array(latencies) * 1e6
  print(f"policy: {_describe(model_dir)}")
  threads = f", {num_threads} thread{'s' if num_threads > 1 else ''}" if engine != "tf" else ""
  print(f"engine: {engine}{threads}")
  print(f"environment: {env_name}, {episodes} episodes, {len(us)} steps")
  print(f"average return: {policy_return:.1f} (random policy: {random_return:.1f})")
  print(f"action() latency per step: median {np.median(us):.0f} us, "
        f"p90 {np.percentile(us, 90):.0f} us; {len(us) / seconds:,.0f} env steps/s")
  return {"policy_return": policy_return, "random_return": random_return,
          "median_us": float(np.median(us)), "steps_per_s": len(us) / seconds}


def evaluate(model_dir: str, env_name: str | None, episodes: int, workers: int,
             address: str | None, backend: str, seed: int, as_json: bool,
             plot: str | None, allow_unsafe_ops: bool = False, precision: str = "fp32",
             num_threads: int = 1) -> dict:
  from policy_runtime.policies import evaluation  # pylint: disable=import-outside-toplevel

  with tqdm(total=episodes, desc="episodes", unit="episode", leave=False) as bar:
    result = evaluation.evaluate(model_dir, env_name, episodes=episodes, workers=workers,
                                 address=address, backend=backend, seed=seed,
                                 on_episode=lambda _: bar.update(),
                                 allow_unsafe_ops=allow_unsafe_ops, precision=precision,
                                 num_threads=num_threads)
  print(f"policy: {_describe(model_dir)}")
  print(result.summary())
  if plot:
    _plot_returns(result, plot)
    print(f"histogram of returns: {plot}")
  summary = result.to_json()
  if as_json:
    print(json.dumps(summary))
  return summary


def compile_command(model_dir: str, out_dir: str, checkpoint: str | None,
                    allow_unsafe_ops: bool, precision: str = "fp32") -> dict:
  from policy_runtime.policies import compile as compile_lib  # pylint: disable=import-outside-toplevel

  start = time.perf_counter()
  result = compile_lib.compile_policy(model_dir, out_dir, checkpoint=checkpoint,
                                      allow_unsafe_ops=allow_unsafe_ops, precision=precision)
  seconds = time.perf_counter() - start
  validation = result.report["validation"] or {}
  print(f"compiled {model_dir}{f' with {checkpoint}' if checkpoint else ''} -> {out_dir} "
        f"in {seconds:.1f} s (train step {result.train_step}, {precision})")
  for check in validation.get("outputs", []):
    print(f"  {check['path']}: {check['kind']}, {check['statistic']} {check['figure']:.3g} "
          f"(threshold {check['threshold']:.3g})")
  return result.report


def _plot_returns(result, path: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  from matplotlib import pyplot  # pylint: disable=import-outside-toplevel
  figure, axes = pyplot.subplots(figsize=(6, 4))
  axes.hist(result.returns, bins=min(30, max(5, len(result.episodes) // 5)))
  axes.axvline(result.mean_return, color="black", linestyle="--",
               label=f"mean {result.mean_return:.1f} ± {result.ci95:.1f} (95% CI)")
  axes.set_xlabel("episode return")
  axes.set_ylabel("episodes")
  axes.set_title(f"{result.env_id}: {len(result.episodes)} episodes, "
                 f"{result.workers} Ray workers")
  axes.legend()
  figure.tight_layout()
  figure.savefig(path)
  pyplot.close(figure)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="policy_cli", description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="command", required=True)
  p_inspect = sub.add_parser("inspect", help="print specs, signatures, train step, metadata, ops")
  p_inspect.add_argument("dir", nargs="?", default=DEFAULT_POLICY)
  p_run = sub.add_parser("run", help="drive the policy in its environment")
  p_run.add_argument("dir", nargs="?", default=DEFAULT_POLICY)
  p_eval = sub.add_parser("evaluate", help="many seeded episodes on Ray workers")
  p_eval.add_argument("dir", nargs="?", default=DEFAULT_POLICY)
  p_compile = sub.add_parser("compile", help="compile DIR into OUT for acting without TF")
  p_compile.add_argument("dir")
  p_compile.add_argument("out")
  p_compile.add_argument("--checkpoint", default=None,
                         help="compile these weights (a PolicySaver checkpoint directory)")
  p_eval.add_argument("--workers", type=int, default=2, help="Ray actors, one CPU each")
  p_eval.add_argument("--address", default=None,
                      help="Ray cluster to join (default: start a local instance)")
  p_eval.add_argument("--json", action="store_true",
                      help="end with one line: the summary as a JSON object")
  p_eval.add_argument("--plot", default=None, metavar="FILE.png",
                      help="write a histogram of the returns")
  for p in (p_run, p_eval):
    p.add_argument("--env", default=None,
                   help="Gymnasium environment id, or gym:ID for gym 0.23's (default: the "
                        f"policy's env_name metadata, else {episodes_lib.DEFAULT_ENV})")
    p.add_argument("--episodes", type=int, default=20 if p is p_run else 100)
    p.add_argument("--seed", type=int, default=0, help="environment seed of episode 0")
    p.add_argument("--backend", default="tf", help="engine that runs action()")
    p.add_argument("--num-threads", type=int, default=1, help="CPU threads per LiteRT run")
  for p in (p_run, p_eval, p_compile):
    p.add_argument("--precision", default="fp32",
                   help="LiteRT precision: fp32, or int8 (validated against TF at load)")
  for p in (p_inspect, p_run, p_eval, p_compile):
    p.add_argument("--allow-unsafe-ops", action="store_true",
                   help="load graphs that touch files, the network or run Python")
  args = parser.parse_args(argv)
  try:
    if (args.command in ("run", "evaluate") and args.backend == "tf" and
        not compiled_format.is_compiled(args.dir) and
        (args.precision != "fp32" or args.num_threads != 1)):
      raise ValueError("--precision and --num-threads apply to --backend lite or auto "
                       "(or a compiled policy), not tf")
    if args.command == "inspect":
      inspect(args.dir, args.allow_unsafe_ops)
    elif args.command == "compile":
      compile_command(args.dir, args.out, args.checkpoint, args.allow_unsafe_ops,
                      args.precision)
    elif args.command == "run":
      run(args.dir, args.env, args.episodes, args.seed, args.allow_unsafe_ops, args.backend,
          args.precision, args.num_threads)
    else:
      evaluate(args.dir, args.env, args.episodes, args.workers, args.address, args.backend,
               args.seed, args.json, args.plot, args.allow_unsafe_ops, args.precision,
               args.num_threads)
  except (FileNotFoundError, FileExistsError, ValueError, TypeError, graph_audit.UnsafeGraphError,
          RuntimeError) as e:   # RuntimeError: e.g. evaluation.WorkerLostError
    print(f"policy_cli: {e}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print("policy_cli: interrupted", file=sys.stderr)
    return 130
  return 0


if __name__ == "__main__":
  sys.exit(main())
