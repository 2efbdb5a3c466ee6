"""Engines: what runs a loaded copy's `action` on the marshaling plan's leaves.

Every engine offers the same small interface to `SavedModelPyTFEagerPolicy`:

    engine.name                 "tf" or "lite"
    engine.prepare(loaded)      per loaded copy, with its current weights (at
                                load, and for the standby copy on every
                                update): the `call_args` its calls need;
                                raises ValueError if the copy cannot run on
                                this engine
    engine.follow(loaded, pushed)  the same after the copy's model variables
                                were set to `pushed` (weights pushed into
                                `variables()`): no conversion, no validation
    engine.call                 the hot path, `call(time_step, policy_state,
                                *call_args)` -> PolicyStep of owned arrays
    engine.rows_batch(n, max)   the batch `n` callers' rows run at (padded)
    engine.last_report          the last validation report (None: nothing to
                                validate)

Each copy carries its own call_args, so where copies prepared for different
engines can meet (backend="auto" moving to TF on an update; the dynamic
batcher's row path) `by_call_args` picks the native entry point per call.

The marshaling plan is the one place that knows the nest layout; each engine
feeds it in its own way (TF eager tensors, or LiteRT's buffers).
"""


def by_call_args(tf_call, buffer_call):
  """`call(a, b, *call_args)` running `tf_call` for a copy prepared for TF (its call_args
  start with the function name) and `buffer_call` for one prepared for a buffer engine."""

  def call(first, second, *call_args):
    return (tf_call if isinstance(call_args[0], str) else buffer_call)(first, second, *call_args)

  return call
