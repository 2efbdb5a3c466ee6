"""The variables `policy.variables()` returns: writes to them reach `action()`.

TF-Agents' actors keep a policy current by assigning new values to the list
`policy.variables()` returned once (`ReverbVariableContainer.update` assigns
them inside a `tf.function`). Our engines never read those variables
directly (LiteRT runs a converted model; updates swap between two loaded
copies), so the list is a set of `PushedVariable`s, one per model variable,
that report every write to a `PushTracker`:

* eagerly, each write is one push, reported when it has finished;
* inside a `tf.function`, all the writes to these variables in one call of the
  traced graph are one push: a hook that runs before any of them opens it,
  and one after each write closes it when the last one is done
  (`tf.py_function` ops, ordered by control dependencies).

A traced graph's hooks report to the tracker of the variables it was traced
with, so each `PushedVariable` has a trace type of its own
(`_PushedVariableSpec`): a `tf.function` called with another policy's
variables (or plain ones) traces again instead of reusing a graph whose hooks
report elsewhere.

The policy follows a push once it is complete: the next `action()` runs on
the new values, and no call ever sees some variables of a push and not the
others (the policy reads them only while no push is open, and checks that
none began while it read). Writes through the raw handle
(`tf.raw_ops.AssignVariableOp`) bypass the tracker and are not followed.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from typing import Callable, List, Optional

import tensorflow as tf
from tensorflow.python.ops import resource_variable_ops

# Every method of a resource variable that writes its value.
_WRITES = (
    "assign", "assign_add", "assign_sub", "scatter_sub", "scatter_add", "scatter_max",
    "scatter_min", "scatter_mul", "scatter_div", "scatter_update", "batch_scatter_update",
    "scatter_nd_sub", "scatter_nd_add", "scatter_nd_update", "scatter_nd_max",
    "scatter_nd_min", "_restore_from_tensors")


class PushTracker:
  """Counts the pushes into one policy's variables.

  `generation` changes whenever a push opens or completes; `quiet_generation()`
  is it while no push is open, else None. `on_push()` runs (in the writer's
  thread) each time a push completes.
  """

  def __init__(self, on_push: Callable[[], None]):
    self._on_push = on_push
    self._lock = threading.Lock()
    self._open = {}          # token -> writes still to finish
    self._tokens = 0
    self.generation = 0
    self._graphs = weakref.WeakKeyDictionary()   # FuncGraph -> _GraphPush

  def begin(self, writes: int) -> int:
    with self._lock:
      self._tokens += 1
      self._open[self._tokens] = max(int(writes), 1)
      self.generation += 1
      return self._tokens

  def done(self, token: int) -> None:
    with self._lock:
      left = self._open.get(int(token))
      if left is None:
        return
      if left > 1:
        self._open[int(token)] = left - 1
        return
      # A push that began before this one and is still open is one whose
      # graph failed part-way (pushes come from one writer at a time): it
      # would block every later push, so it is closed here.
      for older in [t for t in self._open if t <= int(token)]:
        del self._open[older]
      self.generation += 1
    self._on_push()

  def quiet_generation(self) -> Optional[int]:
    with self._lock:
      return None if self._open else self.generation

  def graph_push(self, graph) -> "_GraphPush":
    """This graph's push: its opening hook is made on the first write traced in it."""
    push = self._graphs.get(graph)
    if push is None:
      push = self._graphs[graph] = _GraphPush(self)
    return push


class _GraphPush:
  """The hooks of one traced graph: `token` opens the push before any write runs."""

  def __init__(self, tracker: PushTracker):
    self.writes = 0
    tracker_ref = weakref.ref(tracker)

    def begin():
      tracker = tracker_ref()
      # self.writes is final by the time the traced graph runs.
      return tracker.begin(self.writes) if tracker is not None else 0

    self.token = tf.py_function(begin, [], tf.int64, name="push_begin")


_variable_ids = itertools.count(1)


class _PushedVariableSpec(resource_variable_ops.VariableSpec):
  """A VariableSpec that also names one PushedVariable: traces are never shared."""

  __slots__ = ["variable_id"]

  def __init__(self, shape, dtype=tf.float32, trainable=True, alias_id=None, variable_id=0):
    super().__init__(shape, dtype, trainable, alias_id)
    self.variable_id = variable_id

  def _serialize(self):
    return super()._serialize() + (self.variable_id,)

  def _get_structure(self):
    return resource_variable_ops.PList(*super()._get_structure().components,
                                       resource_variable_ops.PLeaf())

  def is_subtype_of(self, other):
    return (type(other) is type(self) and other.variable_id == self.variable_id and
            super().is_subtype_of(other))

  def most_specific_common_supertype(self, others):
    if any(type(o) is not type(self) or o.variable_id != self.variable_id for o in others):
      return None
    return super().most_specific_common_supertype(others)

  def __hash__(self):
    return hash((super().__hash__(), self.variable_id))

  def __eq__(self, other):
    return super().__eq__(other) and self.variable_id == other.variable_id

  def __repr__(self):
    return f"{super().__repr__()[:-1]}, variable_id={self.variable_id})"


class PushedVariable(resource_variable_ops.ResourceVariable):
  """A `tf.Variable` whose writes are reported to a `PushTracker` (see module docstring)."""

  def _set_tracker(self, tracker: PushTracker) -> None:
    self._push_tracker = tracker
    self._variable_id = next(_variable_ids)

  def __tf_tracing_type__(self, signature_context):
    spec = super().__tf_tracing_type__(signature_context)
    return _PushedVariableSpec(spec.shape, spec.dtype, spec.trainable, spec.alias_id,
                               getattr(self, "_variable_id", 0))

  def _silent_assign(self, value) -> None:
    """Writes `value` without reporting a push (the policy's own bookkeeping)."""
    resource_variable_ops.ResourceVariable.assign(self, value, read_value=False)


def _reporting(name: str):
  write = getattr(resource_variable_ops.ResourceVariable, name)

  def reported(self, *args, **kwargs):
    tracker = getattr(self, "_push_tracker", None)
    if tracker is None:
      return write(self, *args, **kwargs)
    if tf.executing_eagerly():
      token = tracker.begin(1)
      try:
        return write(self, *args, **kwargs)
      finally:
        tracker.done(token)
    push = tracker.graph_push(tf.compat.v1.get_default_graph())
    with tf.control_dependencies([push.token]):
      result = write(self, *args, **kwargs)
    push.writes += 1
    written = result if isinstance(result, tf.Operation) else getattr(result, "op", None)
    token_ref = weakref.ref(tracker)

    def finished(token):
      tracker = token_ref()
      if tracker is not None:
        tracker.done(int(token))

    with tf.control_dependencies([written] if written is not None else []):
      tf.py_function(finished, [push.token], [], name="push_done")
    return result

  reported.__name__ = name
  reported.__doc__ = write.__doc__
  return reported


for _name in _WRITES:
  if hasattr(resource_variable_ops.ResourceVariable, _name):
    setattr(PushedVariable, _name, _reporting(_name))


def pushed_copies(variables: list, tracker: PushTracker) -> List[PushedVariable]:
  """`PushedVariable`s with the names, dtypes, shapes and values of `variables`."""
  copies = []
  for variable in variables:
    copy = PushedVariable(initial_value=variable.read_value(), trainable=variable.trainable,
                          name=variable.name.split(":")[0], dtype=variable.dtype,
                          shape=variable.shape)
    copy._set_tracker(tracker)  # pylint: disable=protected-access
    copies.append(copy)
  return copies
