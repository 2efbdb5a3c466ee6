"""Policy specs: from the constructor's arguments or from `policy_specs.pbtxt`."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

from . import quiet_gym  # noqa: F401  before TF-Agents, which imports gym

import numpy as np
import tensorflow as tf
from tf_agents.policies import policy_saver
from tf_agents.specs import tensor_spec

from . import storage


@dataclasses.dataclass
class PolicySpecs:
  time_step_spec: Any
  action_spec: Any
  policy_state_spec: Any
  info_spec: Any
  collect_data_spec: Optional[Any] = None   # only when read from pbtxt


def resolve(model_path: str, time_step_spec, action_spec, policy_state_spec, info_spec,
            load_specs_from_pbtxt: bool) -> PolicySpecs:
  """Specs as TF-Agents' SavedModelPyTFEagerPolicy picks them.

  Arguments win; with no `time_step_spec` and `load_specs_from_pbtxt`, the
  specs are read from `<model_path>/policy_specs.pbtxt`.

  Raises:
    ValueError: neither specs nor `load_specs_from_pbtxt` were given.
    FileNotFoundError: `policy_specs.pbtxt` is missing.
  """
  if time_step_spec:
    return PolicySpecs(time_step_spec, action_spec, policy_state_spec, info_spec)
  if not load_specs_from_pbtxt:
    raise ValueError(
        "SavedModelPyTFEagerPolicy needs the policy's specs: pass time_step_spec and "
        "action_spec (and policy_state_spec / info_spec if any), or pass "
        "load_specs_from_pbtxt=True to read them from the policy_specs.pbtxt that "
        "PolicySaver writes next to saved_model.pb")
  path = storage.join(os.fspath(model_path), policy_saver.POLICY_SPECS_PBTXT)
  if not storage.is_file(path):
    raise FileNotFoundError(f"load_specs_from_pbtxt=True but the spec file is missing: {path}")
  try:  # through TF's file layer, like every other read
    loaded = policy_saver.specs_from_collect_data_spec(tensor_spec.from_pbtxt_file(path))
  except Exception as e:  # text_format.ParseError and friends
    raise ValueError(f"cannot parse spec file {path}: {str(e).splitlines()[0] if str(e) else e!r}") from None
  return PolicySpecs(
      time_step_spec=loaded["time_step_spec"],
      action_spec=loaded["action_spec"],
      policy_state_spec=loaded["policy_state_spec"],
      info_spec=loaded["info_spec"],
      collect_data_spec=loaded["collect_data_spec"],
  )


def with_batch(spec_nest, batch_size: Optional[int]):
  """TensorSpecs of `spec_nest` with a leading batch dimension."""
  def add(spec):
    spec = tensor_spec.from_spec(spec)
    return tf.TensorSpec([batch_size] + list(spec.shape), spec.dtype, spec.name)
  return tf.nest.map_structure(add, spec_nest)


def zeros(spec_nest, outer_shape=()):
  """Numpy zeros for every TensorSpec in `spec_nest`, with `outer_shape` prepended."""
  def make(spec):
    return np.zeros(tuple(outer_shape) + tuple(spec.shape), spec.dtype.as_numpy_dtype)
  return tf.nest.map_structure(make, spec_nest)
