"""Python face of the native marshaler (`native/_marshal.so`).

This module is the only importer of the extension. A `Plan` turns a nested
numpy `(time_step, policy_state)` into the flat eager-tensor argument list of a
saved `action` function and packs the function's flat outputs back into a
nest, validating every leaf on the way. Plans are compiled by
`policies.saved_model.marshaling_plan`; the node encoding is:

Input nodes (one tree for the time step, one for the policy state):
  ("leaf", path, slot, numpy_dtype, inner_dims, batch, tf_dtype_enum)
      slot: index in the function's argument list; inner_dims: shape without
      the batch dimension, -1 for unknown; batch: NO_CALLER_BATCH (the caller
      passes an unbatched leaf, a batch of 1 is added), ANY_BATCH (batched,
      any size consistent across leaves) or a fixed size.
  ("namedtuple", path, children, field_names, type_name)
  ("dict", path, children, sorted_keys)
  ("sequence", path, children)           # list or tuple; () accepts None/{}.

Per call, a leaf that has the plan's dtype, is C-contiguous, writeable,
64-byte aligned and at least ZERO_COPY_MIN_BYTES large is lent to TF as is
(DLPack). Smaller leaves are copied into staging tensors that the plan reuses
across calls (a pool keyed by batch size), which is cheaper than creating a
tensor per leaf. Everything else is copied once into an aligned buffer.
Python numbers must fit the leaf's dtype; eager tensors are read as arrays.
Outputs are always copied into arrays the caller owns.

`CopySwitch` picks the loaded copy of a policy that calls run on (each copy
object carries the `call_args` appended to `call(fn, *args)`), and counts
the calls on each copy in C++, so no exception can leave a copy marked busy;
`wait_idle` lets an update wait (GIL released) until a copy is free.
`mark_stale()` (weights were pushed) makes the next `call`/`with_active` run
the callback given to `set_follow` first (it brings the weights in and
clears the mark); until then a call pays one atomic load for it.

`LiteRtEngine(library, flatbuffer, signature, input_names, output_names,
output_dims, first_batch, max_batch_sizes, release_gil_from_batch,
num_threads=1)` runs a
LiteRT model through LiteRT's C API in `library` (a libLiteRt.so, loaded at
run time): its `handle`, passed to `call_buffers`/`call_rows_buffers` in place
of `lease`, lends the call a runner prepared for its batch (a compiled model with
host-memory buffers), with no Python in between. It raises ValueError when
the model cannot run that way here (policies/runtime/lite_model.py then
uses the interpreter).

Output nodes:
  ("leaf", output_index, unbatch)
  ("namedtuple", type, children) | ("dict", keys, children)
  ("list", children) | ("tuple", children)
"""

from ._marshal import (ALIGNMENT, ANY_BATCH, NO_CALLER_BATCH, ZERO_COPY_MIN_BYTES,
                             CopySwitch, LiteRtEngine, Plan, live_exported_leaves)

__all__ = ["ALIGNMENT", "ANY_BATCH", "NO_CALLER_BATCH", "ZERO_COPY_MIN_BYTES", "CopySwitch",
           "LiteRtEngine", "Plan", "live_exported_leaves"]
