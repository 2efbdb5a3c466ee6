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
    engine.rows_batch(n, max)   the batch `n` callers' rows run at (padded)
    engine.last_report          the last validation report (None: nothing to
                                validate)

The dynamic batcher's row path picks `call_rows` (TF's call_args) or
`call_rows_buffers` (a buffer engine's) from each copy's call_args.

The marshaling plan is the one place that knows the nest layout; each engine
feeds it in its own way (TF eager tensors, or LiteRT's buffers).
"""
