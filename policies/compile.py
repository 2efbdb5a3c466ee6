"""Compiles a PolicySaver export into a compiled policy directory (needs TensorFlow).

    from policy_runtime.policies import compile_policy
    compile_policy("/models/policy", "/models/compiled/step_1000",
                   checkpoint="/models/checkpoints/policy_checkpoint_0000001000")

The export is loaded, audited, converted to LiteRT and validated exactly as
`SavedModelPyTFEagerPolicy(..., backend="lite")` does (sampled outputs through
the distribution check), then written in the format of
`policies.runtime.compiled_format`, manifest last. `policies.runtime.compiled.CompiledPolicy`
acts on the result without TensorFlow.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import shutil
import tempfile
from typing import Optional

from .saved_model import quiet_gym  # noqa: F401  before TF-Agents, which imports gym

import numpy as np
import tensorflow as tf

from . import saved_model_policy
from .runtime import array_specs
from .runtime import compiled_format
from .runtime import lite_model
from .saved_model import storage


@dataclasses.dataclass(frozen=True)
class CompileResult:
  """What `compile_policy` wrote."""
  path: str
  train_step: int
  report: dict          # report.json


def _version(package: str) -> Optional[str]:
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None


def _plain(value) -> np.ndarray:
  """A numpy array np.load reads without pickles (TF strings become bytes arrays)."""
  array = np.asarray(value)
  if array.dtype == object:
    array = np.array([v if isinstance(v, bytes) else str(v).encode()
                      for v in array.reshape(-1)], dtype=bytes).reshape(array.shape)
  return array


def _initial_state(policy, fixed: Optional[int]) -> tuple:
  """(batch stored, leaves): the state for a batch of 1 (or the fixed batch).

  Raises:
    ValueError: the initial state of a batch is not its first row repeated,
      which a compiled policy could not reproduce.
  """
  leaves = array_specs.flatten(policy.get_initial_state(fixed or 1))
  if not leaves or fixed is not None:
    return fixed or 1, [np.asarray(leaf) for leaf in leaves]
  wide = array_specs.flatten(policy.get_initial_state(3))
  for one, three in zip(leaves, wide):
    if not np.array_equal(np.broadcast_to(one, np.shape(three)), three):
      raise ValueError("get_initial_state(batch_size) is not the same state for every "
                       "environment, which compiled policies cannot reproduce")
  return 1, [np.asarray(leaf) for leaf in leaves]


def compile_policy(model_path, out_dir, *, checkpoint=None, time_step_spec=None,
                   action_spec=None, policy_state_spec=(), info_spec=(),
                   load_specs_from_pbtxt: bool = True, allow_unsafe_ops: bool = False,
                   lite_cache_dir: Optional[str] = None,
                   precision: str = "fp32", validation_observations=None) -> CompileResult:
  """Compiles `model_path` (a PolicySaver export) into `out_dir`.

  Args:
    model_path: the export, on any file system TensorFlow reads.
    out_dir: the compiled directory to create (must not exist, or be empty).
      Local directories appear whole (written beside, then renamed); on other
      file systems the manifest is written last, so readers never take a
      half-written directory.
    checkpoint: a `PolicySaver.save_checkpoint` (or `save`) directory whose
      weights to compile instead of the export's own.
    time_step_spec, action_spec, policy_state_spec, info_spec,
    load_specs_from_pbtxt, allow_unsafe_ops, lite_cache_dir: as for
      `SavedModelPyTFEagerPolicy`.
    precision: "fp32" or "int8", as for `SavedModelPyTFEagerPolicy` (the
      validation report, in the directory's report.json, gives the agreement).
    validation_observations: observations to validate on, as for
      `SavedModelPyTFEagerPolicy`.

  Raises:
    FileNotFoundError: the export or checkpoint is missing.
    FileExistsError: `out_dir` exists and is not empty.
    ValueError: the export does not audit, convert or validate (naming why).
  """
  model_path, out_dir = os.fspath(model_path), os.fspath(out_dir)
  if storage.is_dir(out_dir) and tf.io.gfile.listdir(out_dir):
    raise FileExistsError(f"compile_policy: {out_dir} exists and is not empty")
  policy = saved_model_policy.SavedModelPyTFEagerPolicy(
      model_path, time_step_spec, action_spec, policy_state_spec, info_spec,
      load_specs_from_pbtxt=load_specs_from_pbtxt, batch_time_steps=False,
      allow_unsafe_ops=allow_unsafe_ops, backend="lite", lite_cache_dir=lite_cache_dir,
      precision=precision, validation_observations=validation_observations)
  if checkpoint is not None:
    policy.update_from_checkpoint(checkpoint)
  files = _files(policy, model_path, checkpoint)
  if "://" in out_dir:
    for name, data in _ordered(files):
      storage.write_bytes(storage.join(out_dir, name), data)
  else:
    _write_local(out_dir, files)
  report = json.loads(files[compiled_format.REPORT])
  return CompileResult(out_dir, int(report["train_step"]), report)


def _ordered(files: dict):
  written = []
  compiled_format.write(files, lambda name, data: written.append((name, data)))
  return written


def _write_local(out_dir: str, files: dict) -> None:
  parent = os.path.dirname(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.", dir=parent)
  try:
    for name, data in _ordered(files):
      with open(os.path.join(staging, name), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(staging, 0o755)
    if os.path.isdir(out_dir):
      os.rmdir(out_dir)   # empty (checked); a file written meanwhile makes this fail
    os.rename(staging, out_dir)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise


def _files(policy: saved_model_policy.SavedModelPyTFEagerPolicy, model_path: str,
           checkpoint: Optional[str]) -> dict:
  """The compiled directory's files for the weights `policy` acts on now."""
  active = policy._switch.active  # pylint: disable=protected-access
  model = lite_model.model_of(active.call_args)
  if model is None:
    raise ValueError(f"{model_path}: the policy does not run on LiteRT")
  plan = policy._plan  # pylint: disable=protected-access
  function = plan.function
  engine = policy._engine  # pylint: disable=protected-access
  fixed = plan.fixed_batch_size
  state_batch, state_leaves = _initial_state(policy, fixed)
  metadata = policy.get_metadata()
  values = {"train_step": np.asarray(policy.get_train_step())}
  train_step = int(values["train_step"])
  values.update({f"initial_state_{i}": leaf for i, leaf in enumerate(state_leaves)})
  names = sorted(metadata)
  values.update({f"metadata_{i}": _plain(metadata[n]) for i, n in enumerate(names)})
  validation = policy.lite_validation
  policy_json = {
      "specs": {
          "time_step_spec": array_specs.to_json(policy.time_step_spec, "time_step_spec"),
          "action_spec": array_specs.to_json(policy.action_spec, "action_spec"),
          "policy_state_spec": array_specs.to_json(policy.policy_state_spec,
                                                   "policy_state_spec"),
          "info_spec": array_specs.to_json(policy.info_spec, "info_spec"),
      },
      "signature": {
          "time_step": array_specs.to_json(function.time_step_spec, "time_step"),
          "policy_state": array_specs.to_json(function.policy_state_spec, "policy_state"),
          "outputs": _outputs_json(function.output_structure),
          "num_outputs": function.num_outputs,
          "input_slots": None if function.input_slots is None else list(function.input_slots),
          "output_indices": (None if function.output_indices is None else
                             list(function.output_indices)),
          "input_names": engine._input_names,  # pylint: disable=protected-access
          "output_names": engine._output_names,  # pylint: disable=protected-access
          "fixed_batch_size": fixed,
      },
      "stochastic": bool(policy._stochastic),  # pylint: disable=protected-access
      "initial_state": {"batch": state_batch, "leaves": len(state_leaves)},
      "metadata": names,
      # Stored as numpy bytes arrays; read back as TF's object arrays of bytes.
      "metadata_strings": [n for n in names if np.asarray(metadata[n]).dtype == object],
  }
  report = {
      "source": {"model_path": model_path, "fingerprint": policy.fingerprint,
                 "checkpoint": None if checkpoint is None else os.fspath(checkpoint),
                 "load_mode": policy.load_mode},
      "train_step": train_step,
      "versions": {"tensorflow": tf.__version__, "converter": f"tf.lite.TFLiteConverter "
                   f"(TensorFlow {tf.__version__})", "tf_agents": _version("tf-agents"),
                   "ai_edge_litert": _version("ai-edge-litert")},
      "validation": validation.to_json() if validation is not None else None,
  }
  return {
      compiled_format.FLATBUFFER: model.flatbuffer,
      compiled_format.POLICY: json.dumps(policy_json, indent=1).encode(),
      compiled_format.VALUES: compiled_format.values_bytes(values),
      compiled_format.REPORT: json.dumps(report, indent=1).encode(),
  }


def _outputs_json(structure):
  """The output nest with plain leaves (symbolic tensors carry graph names we do not keep)."""
  return array_specs.to_json(tf.nest.map_structure(
      lambda t: tf.TensorSpec(t.shape, t.dtype), structure), "outputs")
