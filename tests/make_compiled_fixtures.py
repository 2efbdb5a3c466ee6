"""Builds the TF-free test's fixtures: compiled policies and what backend="lite" does on them.

    make_compiled_fixtures OUT.tar

Runs where TensorFlow is (a genrule of //tests, so the TF-free test's own
closure never holds TensorFlow). For each fixture policy: its PolicySaver
export compiled with `compile_policy`, and `reference.npz` with inputs and
backend="lite" outputs in both batch modes, an LSTM rollout of 20 steps with
its state carried, and many draws on one input for sampled outputs.
"""

import os
import sys
import tarfile
import tempfile
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# PolicySaver's note on encoding TFP specs, once per fixture: noise in a build's output.
warnings.filterwarnings("ignore", message="Encoding a StructuredValue")

from policy_runtime.policies.saved_model import quiet_gym  # noqa: E402,F401  before TF-Agents, which imports gym
from tools.fixtures import tf_agents_keras  # noqa: E402

tf_agents_keras.select_keras_2()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tf_agents.specs import array_spec  # noqa: E402

from policy_runtime.policies import SavedModelPyTFEagerPolicy, compile_policy  # noqa: E402
from policy_runtime.policies.engines import lite_validation  # noqa: E402
from tools.fixtures import policy_zoo  # noqa: E402

# name: (builder, fixed batch); the kinds that run on lite.
FIXTURES = {
    "q_mlp": (policy_zoo.q_mlp_policy, None),
    "lstm_actor": (lambda: policy_zoo.lstm_actor_policy(greedy=True), None),
    "q_fixed_batch": (lambda: policy_zoo.q_mlp_policy(seed=3), 4),
    "q_sampling": (policy_zoo.q_sampling_policy, None),
    "gaussian_actor": (policy_zoo.gaussian_actor_policy, None),
    "lstm_stochastic": (lambda: policy_zoo.lstm_actor_policy(greedy=False), None),
}
CASES = 8
ROLLOUT = 20
DRAWS = 4000


def _sample(policy, outer, rng):
  step = array_spec.sample_spec_nest(policy.time_step_spec, rng, outer_dims=outer)
  return step._replace(observation=tf.nest.map_structure(
      lambda o: np.clip(o, -10, 10).astype(o.dtype), step.observation))


def _store(arrays: dict, prefix: str, nest) -> None:
  for i, leaf in enumerate(tf.nest.flatten(nest)):
    arrays[f"{prefix}/{i}"] = np.asarray(leaf)


def references(path: str, fixed) -> dict:
  arrays = {}
  rng = np.random.RandomState(0)
  modes = [False] if fixed else [True, False]
  for batch_time_steps in modes:
    policy = SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True, backend="lite",
                                       batch_time_steps=batch_time_steps)
    mode = "unbatched" if batch_time_steps else "batched"
    batch = None if batch_time_steps else (fixed or 5)
    for c in range(CASES):
      step = _sample(policy, () if batch is None else (batch,), rng)
      state = policy.get_initial_state(1 if batch is None else batch)
      _store(arrays, f"{mode}/{c}/time_step", step)
      _store(arrays, f"{mode}/{c}/policy_state", state)
      _store(arrays, f"{mode}/{c}/output", policy.action(step, state))
  policy = SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True, backend="lite",
                                     batch_time_steps=not fixed)
  state = policy.get_initial_state(fixed)
  for t in range(ROLLOUT if tf.nest.flatten(policy.policy_state_spec) and not fixed else 0):
    step = _sample(policy, (), rng)
    out = policy.action(step, state)
    _store(arrays, f"rollout/{t}/time_step", step)
    _store(arrays, f"rollout/{t}/output", out)
    state = out.state
  sampled = [c.path for c in policy.lite_validation.outputs if c.kind == "sampled"]
  if sampled and not fixed:
    batched = SavedModelPyTFEagerPolicy(path, load_specs_from_pbtxt=True, backend="lite",
                                        batch_time_steps=False)
    step = _sample(batched, (), rng)
    steps, states = lite_validation.copies(step, batched.get_initial_state(1), DRAWS)
    _store(arrays, "draws/time_step", steps)
    _store(arrays, "draws/policy_state", states)
    _store(arrays, "draws/output", batched.action(steps, states))
    arrays["draws/sampled"] = np.array(sampled)
  return arrays


def main(argv) -> int:
  """Writes the fixtures; what TF and LiteRT log goes to stderr only if it fails."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as log:
    os.dup2(log.fileno(), 2)
    try:
      return _write(argv[0])
    except BaseException:
      os.dup2(saved, 2)
      log.seek(0)
      sys.stderr.write(log.read().decode(errors="replace"))
      raise
    finally:
      os.dup2(saved, 2)
      os.close(saved)


def _write(out_tar: str) -> int:
  os.environ.setdefault("POLICY_RUNTIME_CACHE_DIR", tempfile.mkdtemp(prefix="lite_cache_"))
  with tempfile.TemporaryDirectory() as work:
    with tarfile.open(out_tar, "w") as tar:
      for name, (build, fixed) in FIXTURES.items():
        export = os.path.join(work, "exports", name)
        policy_zoo.save(build(), export, batch_size=fixed, train_step=42)
        target = os.path.join(work, name)
        os.makedirs(target)
        compile_policy(export, os.path.join(target, "compiled"))
        np.savez(os.path.join(target, "reference.npz"), **references(export, fixed))
        tar.add(target, arcname=name)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
