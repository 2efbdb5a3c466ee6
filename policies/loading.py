"""Loads a `PolicySaver` SavedModel and finds the functions a policy needs.

Turns a directory into a `LoadedPolicy`: the restored object plus the concrete
`action` function over `(time_step, policy_state)`. File problems become
`FileNotFoundError` / `ValueError` naming the path, never TensorFlow internals.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import tensorflow as tf
# Registers TFP's TypeSpecs; PolicySaver exports reference them in the
# `distribution` function, and loading fails without them.
import tensorflow_probability  # noqa: F401  pylint: disable=unused-import

from policies import marshaling_plan

SAVED_MODEL_FILE = "saved_model.pb"


@dataclasses.dataclass
class LoadedPolicy:
  """A restored SavedModel policy."""
  path: str
  saved: Any                                     # the restored object
  action: marshaling_plan.ActionFunction


def check_model_dir(model_path: str) -> str:
  """Returns the path of `saved_model.pb`, raising FileNotFoundError if absent."""
  model_path = os.fspath(model_path)
  if not os.path.isdir(model_path):
    raise FileNotFoundError(f"policy directory not found: {model_path}")
  pb = os.path.join(model_path, SAVED_MODEL_FILE)
  if not os.path.isfile(pb):
    raise FileNotFoundError(f"not a SavedModel directory, {SAVED_MODEL_FILE} is missing: {pb}")
  return pb


def _select_action_concrete(saved) -> Any:
  """The saved `action` concrete function that takes `(time_step, policy_state)`."""
  candidates = []
  for concrete in saved.action.concrete_functions:
    args, kwargs = concrete.structured_input_signature
    if len(args) >= 2 and not kwargs and hasattr(type(args[0]), "_fields"):
      candidates.append(concrete)
  if not candidates:
    raise ValueError(
        "the saved `action` function has no (time_step, policy_state) signature "
        "(was it exported with input_fn_and_spec?)")
  # Prefer the variant with the fewest extra (non-tensor) arguments.
  return min(candidates, key=lambda c: len(c.structured_input_signature[0]))


def load(model_path: str) -> LoadedPolicy:
  """Loads the SavedModel at `model_path`.

  Raises:
    FileNotFoundError: the directory or its saved_model.pb is missing.
    ValueError: the SavedModel cannot be parsed or has no usable `action`.
  """
  pb = check_model_dir(model_path)
  try:
    saved = tf.saved_model.load(model_path)
  except (OSError, ValueError, tf.errors.OpError) as e:
    first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ValueError(f"cannot load SavedModel {pb}: {first_line}") from None
  if not hasattr(saved, "action"):
    raise ValueError(f"{pb} is not a TF-Agents PolicySaver export: it has no `action` function")
  concrete = _select_action_concrete(saved)
  return LoadedPolicy(
      path=model_path,
      saved=saved,
      action=marshaling_plan.action_function_from_concrete(concrete),
  )
