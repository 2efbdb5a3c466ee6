"""Compiled policies where TensorFlow is not installed (runs in .venv-tffree).

The fixtures (compiled directories and what backend="lite" did on them) come
from //tests:compiled_fixtures, built where TensorFlow is.
"""

import ast
import importlib.util
import os
import sys
import tarfile

import numpy as np
import pytest

from policy_runtime.policies import compiled
from policy_runtime.policies.runtime import array_specs, batching
from policy_runtime.policies.runtime import sample_statistics

FLOAT_TOLERANCE = 1e-5   # lite_validation.FLOAT_RTOL / FLOAT_ATOL
_NAMES = ("q_mlp", "lstm_actor", "q_fixed_batch", "q_sampling", "gaussian_actor",
          "lstm_stochastic")


def _runfiles_root() -> str:
  return os.path.join(os.environ["TEST_SRCDIR"], os.environ.get("TEST_WORKSPACE",
                                                                "policy_runtime"))


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
  root = tmp_path_factory.mktemp("compiled")
  with tarfile.open(os.path.join(_runfiles_root(), "tests", "compiled_fixtures.tar")) as tar:
    tar.extractall(root, filter="data")

  def get(name):
    directory = root / name
    return str(directory / "compiled"), dict(np.load(directory / "reference.npz"))

  return get


def _nest(reference: dict, prefix: str, structure):
  count = len(array_specs.flatten(structure))
  return array_specs.pack_sequence_as(structure, [reference[f"{prefix}/{i}"]
                                                  for i in range(count)])


def _assert_close(got, want_flat):
  got_flat = array_specs.flatten(got)
  assert len(got_flat) == len(want_flat)
  for g, w in zip(got_flat, want_flat):
    assert isinstance(g, np.ndarray) and g.dtype == w.dtype and g.shape == w.shape
    if np.issubdtype(g.dtype, np.floating):
      np.testing.assert_allclose(g, w, rtol=FLOAT_TOLERANCE, atol=FLOAT_TOLERANCE)
    else:
      np.testing.assert_array_equal(g, w)


def _outputs(reference: dict, prefix: str) -> list:
  keys = sorted((k for k in reference if k.startswith(prefix + "/")),
                key=lambda k: int(k.rsplit("/", 1)[1]))
  return [reference[k] for k in keys]


def _sampled(policy, reference) -> set:
  return {o["path"] for o in policy.report["validation"]["outputs"] if o["kind"] == "sampled"}


def _output_paths(policy) -> list:
  """PolicyStep leaf paths as the validation report names them (tf.nest's joined paths)."""
  def walk(node, path):
    if array_specs.is_leaf(node):
      return [path]
    if isinstance(node, dict):
      return [p for k in sorted(node) for p in walk(node[k], f"{path}/{k}" if path else k)]
    if isinstance(node, (list, tuple)):
      fields = getattr(node, "_fields", None)
      return [p for i, v in enumerate(node)
              for p in walk(v, f"{path}/{fields[i] if fields else i}" if path else
                            (fields[i] if fields else str(i)))]
    return []
  return walk(policy.policy_step_spec, "")


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("batch_time_steps", [True, False])
@pytest.mark.parametrize("name", _NAMES)
def test_acts_as_lite_did(fixtures, monkeypatch, name, batch_time_steps, native):
  """On LiteRT's C API, and on the interpreter that takes over without it."""
  if not native:
    monkeypatch.setenv("POLICIES_LITERT_LIBRARY", "")
  path, reference = fixtures(name)
  mode = "unbatched" if batch_time_steps else "batched"
  if f"{mode}/0/time_step/0" not in reference:   # a fixed batch export: batched only
    with pytest.raises(ValueError, match="fixed batch size"):
      compiled.CompiledPolicy(path, batch_time_steps=batch_time_steps)
    return
  policy = compiled.CompiledPolicy(path, batch_time_steps=batch_time_steps)
  assert (policy.lite_runtime == "native") == native, policy.lite_runtime
  sampled = _sampled(policy, reference)
  paths = _output_paths(policy)
  case = 0
  while f"{mode}/{case}/time_step/0" in reference:
    step = _nest(reference, f"{mode}/{case}/time_step", policy.time_step_spec)
    state = _nest(reference, f"{mode}/{case}/policy_state", policy.policy_state_spec)
    got = policy.action(step, state)
    want = _outputs(reference, f"{mode}/{case}/output")
    keep = [i for i, p in enumerate(paths) if p not in sampled]
    flat = array_specs.flatten(got)
    _assert_close([flat[i] for i in keep], [want[i] for i in keep])
    case += 1
  assert case == 8
  assert policy.get_train_step() == 42


def test_lstm_state_carried_over_20_steps(fixtures):
  path, reference = fixtures("lstm_actor")
  policy = compiled.CompiledPolicy(path)
  state = policy.get_initial_state()
  for t in range(20):
    step = _nest(reference, f"rollout/{t}/time_step", policy.time_step_spec)
    out = policy.action(step, state)
    _assert_close(out, _outputs(reference, f"rollout/{t}/output"))
    state = out.state
  assert np.abs(state[0]).sum() > 0


@pytest.mark.parametrize("name", ["q_sampling", "gaussian_actor", "lstm_stochastic"])
def test_sampled_outputs_pass_the_distribution_check(fixtures, name):
  path, reference = fixtures(name)
  policy = compiled.CompiledPolicy(path, batch_time_steps=False)
  steps = _nest(reference, "draws/time_step", policy.time_step_spec)
  states = _nest(reference, "draws/policy_state", policy.policy_state_spec)
  got = array_specs.flatten(policy.action(steps, states))
  want = _outputs(reference, "draws/output")
  paths = _output_paths(policy)
  sampled = set(reference["draws/sampled"].tolist())
  assert sampled and sampled <= set(paths)
  bounds = dict(zip(_output_paths(policy)[:len(array_specs.flatten(policy.action_spec))],
                    array_specs.flatten(policy.action_spec)))
  for path_, g, w in zip(paths, got, want):
    if path_ in sampled:
      check = sample_statistics.compare_distributions(path_, [w], [g], bounds.get(path_),
                                                      tests=len(paths))
      assert check.figure < check.threshold


def test_time_steps_built_without_tensorflow_act(fixtures):
  """//policies/runtime carries policies.runtime.time_steps: a TF-free loop builds its own steps."""
  from policy_runtime.policies import time_steps  # pylint: disable=import-outside-toplevel
  path, _ = fixtures("q_mlp")
  policy = compiled.CompiledPolicy(path)
  observation = np.linspace(-1, 1, 4).astype(np.float32)
  first = policy.action(time_steps.restart(observation))
  later = policy.action(time_steps.transition(observation, reward=1.0))
  assert first.action.dtype == later.action.dtype == policy.action_spec.dtype
  assert first.action == later.action   # a greedy policy: the step type does not matter


def test_dynamic_batching_without_tensorflow(fixtures):
  path, reference = fixtures("q_mlp")
  serial = compiled.CompiledPolicy(path)
  with batching.DynamicBatcher(compiled.CompiledPolicy(path, batch_time_steps=False),
                               max_batch_size=8) as batcher:
    for case in range(8):
      step = _nest(reference, f"unbatched/{case}/time_step", serial.time_step_spec)
      np.testing.assert_array_equal(batcher.action(step).action, serial.action(step).action)


def test_this_environment_has_no_tensorflow():
  assert importlib.util.find_spec("tensorflow") is None
  assert importlib.util.find_spec("tf_agents") is None
  assert "tensorflow" not in sys.modules and "tf_agents" not in sys.modules
  assert np.__version__.startswith("2.")


_HEAVY = ("tensorflow", "tf_agents", "tensorflow_probability", "keras", "tf_keras")


def test_the_dependency_closure_imports_no_tensorflow():
  """This target's runfiles are //policies/runtime's closure: no module in it imports TF.

  (The equivalent of `bazel query 'deps(//policies/runtime)'` holding no TF target.) The
  folder is the boundary: of the library, only policies/runtime/ and the package's
  `__init__` and version are shipped.
  """
  root = _runfiles_root()
  sources = []
  for directory, _, names in os.walk(root):
    relative = os.path.relpath(directory, root)
    if relative.split(os.sep)[0] in ("tests", "external"):
      continue
    sources += [os.path.join(relative, n) for n in names if n.endswith(".py")]
  assert "policies/runtime/compiled.py" in sources and "native/marshal.py" in sources
  assert "policies/saved_model_policy.py" not in sources   # not even shipped
  library = [s for s in sources if s.startswith("policies" + os.sep)]
  assert sorted(s for s in library if not s.startswith(os.path.join("policies", "runtime", ""))) == [
      os.path.join("policies", "__init__.py"), os.path.join("policies", "version.py")]
  offenders = []
  for source in sources:
    tree = ast.parse(open(os.path.join(root, source)).read())
    for node in ast.walk(tree):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
               [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
      offenders += [f"{source}: {n}" for n in names if n.split(".")[0] in _HEAVY]
  assert not offenders
