"""Engines: what runs a loaded copy's `action` on the marshaling plan's leaves.

Every engine offers the same small interface to `SavedModelPyTFEagerPolicy`:

    engine.name                 "tf" or "lite"
    engine.prepare(loaded)      per loaded copy, with its current weights (at
                                load, and for the standby copy on every
                                update): the `call_args` its calls need;
                                raises ValueError if the copy cannot run on
                                this engine
    engine.call                 the hot path, `call(time_step, policy_state,
                                *call_args)` -> PolicyStep of owned arrays
    engine.rows_call(rows_plan) the dynamic batcher's path: `call(rows,
                                pad_to, *call_args)` -> owned output arrays
    engine.rows_batch(n, max)   the batch `n` callers' rows run at (padded)

The marshaling plan is the one place that knows the nest layout; each engine
feeds it in its own way (TF eager tensors, or LiteRT's buffers).
"""
