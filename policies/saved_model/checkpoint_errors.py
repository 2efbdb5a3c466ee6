"""Errors of `update_from_checkpoint` that satisfy our contract and TF-Agents' at once.

Our contract: a missing checkpoint is a `FileNotFoundError`, one that cannot
be restored a `ValueError`, each naming the path. TF-Agents' class raises
`tf.errors.NotFoundError` and, for a checkpoint still being written,
`IndexError`, and its evaluators retry on `(tf.errors.OpError, IndexError)`
(`ckpt_evaluator`, `eval_job`). Each error here derives from both, so retry
loops written for either class keep working unchanged.
"""

from __future__ import annotations

import tensorflow as tf


class CheckpointNotFoundError(FileNotFoundError, tf.errors.NotFoundError):
  """The checkpoint directory or its index file is missing."""

  def __init__(self, message: str):
    FileNotFoundError.__init__(self, message)
    # tf.errors.OpError's fields, without its constructor (it wants a node def).
    self._node_def = None
    self._op = None
    self._message = message
    self._error_code = tf.errors.NOT_FOUND
    self._experimental_payloads = {}

  def __str__(self) -> str:
    return self._message

  def __reduce__(self):
    return type(self), (self._message,)


class CheckpointRestoreError(ValueError, IndexError):
  """The checkpoint is truncated, corrupt, still being written or does not match."""
