"""Command line for saved TF-Agents policies.

    policy_cli inspect [DIR]   specs, signatures, train step, metadata, op families
    policy_cli run [DIR]       drive the policy in its Gym environment; average
                               return against a random policy, per-step latency

Without DIR both use the embedded default: a CartPole policy trained by
tools/train_cartpole.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.python.util import nest  # noqa: E402
from tqdm import tqdm  # noqa: E402

from policies import SavedModelPyTFEagerPolicy  # noqa: E402
from policies import graph_audit  # noqa: E402

DEFAULT_POLICY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "default_policy")
DEFAULT_ENV = "CartPole-v0"


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
                                     allow_unsafe_ops=allow_unsafe_ops)
  print(f"policy: {_describe(model_dir)}")
  print(f"  loaded from: {policy.load_mode}")
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


def _describe(model_dir: str) -> str:
  if os.path.abspath(model_dir) == DEFAULT_POLICY:
    return "embedded default (CartPole, trained by tools/train_cartpole.py)"
  return model_dir


def _env_name(policy, requested):
  if requested:
    return requested
  env_name = policy.get_metadata().get("env_name")
  return env_name.item().decode() if env_name is not None else DEFAULT_ENV


def _run_episodes(env, policy, episodes: int, seed: int, desc: str, latencies=None):
  returns = []
  for episode in tqdm(range(episodes), desc=desc, unit="episode", leave=False):
    env.seed(seed + episode)
    step = env.reset()
    state = policy.get_initial_state()
    total = 0.0
    while not step.is_last():
      start = time.perf_counter()
      out = policy.action(step, state)
      if latencies is not None:
        latencies.append(time.perf_counter() - start)
      state = out.state
      step = env.step(out.action)
      total += float(step.reward)
    returns.append(total)
  return float(np.mean(returns))


def run(model_dir: str, env_name: str | None, episodes: int, seed: int,
        allow_unsafe_ops: bool = False) -> dict:
  from tf_agents.environments import suite_gym
  from tf_agents.policies import random_py_policy

  policy = SavedModelPyTFEagerPolicy(model_dir, load_specs_from_pbtxt=True,
                                     allow_unsafe_ops=allow_unsafe_ops)
  env_name = _env_name(policy, env_name)
  env = suite_gym.load(env_name)
  random_policy = random_py_policy.RandomPyPolicy(env.time_step_spec(), env.action_spec(),
                                                  seed=seed)
  latencies: list = []
  policy_return = _run_episodes(env, policy, episodes, seed, "policy", latencies)
  random_return = _run_episodes(env, random_policy, episodes, seed, "random policy")
  us = np.array(latencies) * 1e6
  print(f"policy: {_describe(model_dir)}")
  print(f"environment: {env_name}, {episodes} episodes, {len(us)} steps")
  print(f"average return: {policy_return:.1f} (random policy: {random_return:.1f})")
  print(f"action() latency per step: median {np.median(us):.0f} us, "
        f"p90 {np.percentile(us, 90):.0f} us")
  return {"policy_return": policy_return, "random_return": random_return,
          "median_us": float(np.median(us))}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="policy_cli", description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="command", required=True)
  p_inspect = sub.add_parser("inspect", help="print specs, signatures, train step, metadata, ops")
  p_inspect.add_argument("dir", nargs="?", default=DEFAULT_POLICY)
  p_run = sub.add_parser("run", help="drive the policy in its environment")
  p_run.add_argument("dir", nargs="?", default=DEFAULT_POLICY)
  p_run.add_argument("--env", default=None,
                     help="Gym environment id (default: the policy's env_name metadata, "
                          f"else {DEFAULT_ENV})")
  p_run.add_argument("--episodes", type=int, default=20)
  p_run.add_argument("--seed", type=int, default=0)
  for p in (p_inspect, p_run):
    p.add_argument("--allow-unsafe-ops", action="store_true",
                   help="load graphs that touch files, the network or run Python")
  args = parser.parse_args(argv)
  try:
    if args.command == "inspect":
      inspect(args.dir, args.allow_unsafe_ops)
    else:
      run(args.dir, args.env, args.episodes, args.seed, args.allow_unsafe_ops)
  except (FileNotFoundError, ValueError, TypeError, graph_audit.UnsafeGraphError) as e:
    print(f"policy_cli: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
