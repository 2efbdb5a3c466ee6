"""The native plan's node trees from spec nests, without TensorFlow.

One encoding of a policy's `(time_step, policy_state) -> PolicyStep` layout
for every engine (see `native/marshal.py` for the nodes): the TF plan
(`policies.saved_model.marshaling_plan`) builds it from `tf.TensorSpec` nests, the
compiled policy from the specs stored with it. Leaves are anything with
`shape` and `dtype` (`array_specs.is_leaf`); flattening follows `tf.nest`.
"""

from __future__ import annotations

from typing import Callable, Optional

from ...native import marshal
from . import array_specs


def _tf_dtype_enum(spec) -> int:
  enum = getattr(spec.dtype, "as_datatype_enum", None)
  return int(enum) if enum is not None else int(getattr(spec, "tf_dtype", 0))


def input_tree(structure, path: str, slots: list, batch: int, slot_of: Callable) -> tuple:
  """Encodes a batched spec nest as input nodes; appends its leaf specs to `slots`."""
  if array_specs.is_leaf(structure):
    slot = slot_of(len(slots))
    slots.append(structure)
    inner = tuple(-1 if d is None else d for d in array_specs.shape_of(structure)[1:])
    return ("leaf", path, slot, array_specs.dtype_of(structure), inner, batch,
            _tf_dtype_enum(structure))
  if array_specs.is_namedtuple(structure):
    children = tuple(input_tree(getattr(structure, f), f"{path}.{f}", slots, batch, slot_of)
                     for f in structure._fields)
    return ("namedtuple", path, children, tuple(structure._fields), type(structure).__name__)
  if isinstance(structure, dict):
    keys = tuple(sorted(structure))
    children = tuple(input_tree(structure[k], f"{path}[{k!r}]", slots, batch, slot_of)
                     for k in keys)
    return ("dict", path, children, keys)
  if isinstance(structure, (list, tuple)):
    children = tuple(input_tree(v, f"{path}[{i}]", slots, batch, slot_of)
                     for i, v in enumerate(structure))
    return ("sequence", path, children)
  if structure is None:
    return ("sequence", path, ())
  raise TypeError(f"{path}: unsupported input spec {structure!r}")


def output_tree(structure, counter: list, unbatch: bool, step_type: type,
                top: bool = False) -> tuple:
  """Output nodes; `counter` = [leaves seen, index_of(leaf number)].

  The top namedtuple is packed as `step_type` (a PolicyStep), whose `state`
  keeps its batch dimension when the others lose theirs.
  """
  if array_specs.is_leaf(structure):
    index = counter[1](counter[0])
    counter[0] += 1
    return ("leaf", index, unbatch)
  if array_specs.is_namedtuple(structure):
    if top:
      children = tuple(output_tree(getattr(structure, f), counter, unbatch and f != "state",
                                   step_type) for f in structure._fields)
      return ("namedtuple", step_type, children)
    children = tuple(output_tree(v, counter, unbatch, step_type) for v in structure)
    return ("namedtuple", type(structure), children)
  if isinstance(structure, dict):
    # Values are flattened in sorted-key order; the dict keeps its own order.
    by_key = {k: output_tree(structure[k], counter, unbatch, step_type) for k in sorted(structure)}
    return ("dict", tuple(structure), tuple(by_key[k] for k in structure))
  if isinstance(structure, list):
    return ("list", tuple(output_tree(v, counter, unbatch, step_type) for v in structure))
  if isinstance(structure, tuple):
    return ("tuple", tuple(output_tree(v, counter, unbatch, step_type) for v in structure))
  raise TypeError(f"unsupported output structure {structure!r}")


def build_native_plan(time_step_spec, policy_state_spec, output_structure, num_outputs: int,
                      batch_time_steps: bool, fixed_batch: Optional[int], step_type: type,
                      input_slots: Optional[tuple] = None,
                      output_indices: Optional[tuple] = None, runtime: Optional[dict] = None):
  """The native `Plan` for nests of batched signature specs.

  With `batch_time_steps`, time-step leaves come unbatched (a batch of 1 is
  added) and state leaves come with a batch of 1; otherwise every leaf carries
  the caller's batch, which must be consistent (and equal `fixed_batch` if set).
  `runtime` is TF's (for the eager path); None makes a plan for buffer
  engines only.
  """
  caller_batch = marshal.ANY_BATCH if fixed_batch is None else fixed_batch
  ts_batch = marshal.NO_CALLER_BATCH if batch_time_steps else caller_batch
  state_batch = 1 if batch_time_steps else caller_batch
  slot_of = (lambda i: i) if input_slots is None else input_slots.__getitem__
  slots: list = []
  ts_tree = input_tree(time_step_spec, "time_step", slots, ts_batch, slot_of)
  state_tree = input_tree(policy_state_spec, "policy_state", slots, state_batch, slot_of)
  counter = [0, (lambda i: i) if output_indices is None else output_indices.__getitem__]
  out_tree = output_tree(output_structure, counter, batch_time_steps, step_type, top=True)
  if counter[0] != num_outputs:
    raise ValueError(f"action function returns {num_outputs} tensors but its output "
                     f"structure has {counter[0]} leaves")
  return marshal.Plan(ts_tree, state_tree, out_tree, len(slots), runtime)


def leading_batch(spec_nest) -> Optional[int]:
  """The fixed batch size of a batched spec nest, None when unknown."""
  sizes = {array_specs.shape_of(s)[0] for s in array_specs.flatten(spec_nest)}
  if len(sizes) > 1:
    raise ValueError(f"inconsistent batch dimensions in signature: {sorted(map(str, sizes))}")
  return sizes.pop() if sizes else None


def fixed_batch_error(fixed: Optional[int]) -> Optional[str]:
  """Why `batch_time_steps=True` cannot work on an export of fixed batch `fixed` (None: it can)."""
  if fixed in (None, 1):
    return None
  return (f"this policy was saved with a fixed batch size of {fixed}, so it cannot act "
          f"on single unbatched time steps; create it with batch_time_steps=False and "
          f"pass batches of {fixed}")


def seed_error(seed) -> str:
  """Why `seed` cannot apply to a policy that samples (both policy classes say it alike)."""
  return (f"seed={seed!r}: this policy samples with random ops whose seeds were fixed when "
          "its graph was built, so a per-call seed cannot be applied. Seed the policy "
          "at export instead (PolicySaver(policy, seed=...)) and call action() without seed")


def initial_state_batch(batch_size: Optional[int], batch_time_steps: bool,
                        fixed: Optional[int]) -> int:
  """The batch `get_initial_state(batch_size)` makes, by the rules of both policy classes.

  Raises:
    ValueError: no batch size where one is needed, or not the fixed one.
  """
  if batch_size is None:
    if batch_time_steps:
      return 1
    if fixed is not None:
      return fixed
    raise ValueError(
        "get_initial_state: pass batch_size (the number of environments) when the "
        "policy was created with batch_time_steps=False")
  if fixed is not None and batch_size != fixed:
    raise ValueError(
        f"get_initial_state: expected batch_size {fixed} (fixed at export), got {batch_size}")
  return batch_size
