"""Dynamic batching without TensorFlow: many threads' single-step calls, one batched call.

`DynamicBatcher` serves any policy that offers `_batching_parts()` (a
`SavedModelPyTFEagerPolicy` created with `batch_time_steps=False`, or a
`CompiledPolicy`); `policies.dynamic_batching.DynamicBatchingPolicy` is its
TF-Agents `PyPolicy` face. Each caller's time step (and policy state) is
validated in the caller's thread by the native plan, exactly as the unbatched
policy validates it. There is no batcher thread: a caller that finds no batch
running leads one. It takes up to `max_batch_size` - 1 waiting calls besides
its own (after up to `max_wait_us`, to let a batch fill), stacks their rows
natively (into TF tensors, or straight into a LiteRT interpreter's input
buffers, padded to a power of two so a few prepared interpreter sizes serve
every batch), runs the policy once on the active weights, wakes each caller
with its own row, and hands the lead to the first caller still waiting. A
lone caller so runs its call in its own thread with no thread hand-off; many
callers each pay one wake-up.
"""

from __future__ import annotations

import _thread
import asyncio
import collections
import concurrent.futures
import dataclasses
import threading
import time
from typing import Any, Callable, Deque, List, Optional


@dataclasses.dataclass(frozen=True)
class BatchingParts:
  """What a policy gives the batcher (`policy._batching_parts()`)."""
  rows: Any                  # native plan: validate() unbatched calls, pack_row()
  switch: Any                # the policy's CopySwitch (one weight set per batch)
  call_rows: Callable        # call_rows(rows, pad_to, *call_args) -> outputs
  padded: Callable           # padded(rows, max_batch_size) -> batch the rows run at
  fixed_batch_size: Optional[int]
  check_seed: Callable       # check_seed(seed): raises for policies that sample
  batch_error: Callable      # batch_error(exception) -> what every caller gets
  # lone(time_step, policy_state, *call_args) -> PolicyStep: one unbatched call
  # (validated as `rows` validates), for a caller that finds the batcher idle.
  lone: Optional[Callable] = None


class BatcherClosedError(RuntimeError):
  """The DynamicBatchingPolicy was closed before the call got its action."""


class _Request:
  """One caller's row and, once woken, its result or error (or the lead).

  A thread's request is woken by releasing `done`; a coroutine's by
  resolving `future` on its own event loop (`loop`).
  """
  __slots__ = ("row", "done", "outputs", "index", "error", "lead", "loop", "future")

  def __init__(self, row: list, loop=None):
    self.row = row
    self.loop = loop
    if loop is None:
      self.done = _thread.allocate_lock()
      self.done.acquire()          # released once: with its result, or to make it lead
      self.future = None
    else:
      self.done = None
      self.future = loop.create_future()
    self.outputs: Optional[list] = None
    self.index = 0
    self.error: Optional[BaseException] = None
    self.lead = False


class DynamicBatcher:
  """Batches concurrent single-step `action()` calls of one policy (see module docstring).

  `action(time_step, policy_state=())` takes one unbatched time step (and a
  policy state with a batch of 1, as `get_initial_state()` returns it) from
  any number of threads at once and returns an unbatched action and info,
  like `batch_time_steps=True`. Calls that are running or waiting when
  `close()` is called get a `BatcherClosedError` if their batch has not run.

  Args:
    policy: a `SavedModelPyTFEagerPolicy` with `batch_time_steps=False`, or
      a `CompiledPolicy` with `batch_time_steps=False`.
    max_batch_size: most calls run in one batch. A policy exported with a
      fixed batch size runs batches of at most that size, padded to it.
    max_wait_us: how long the caller leading a batch waits for more calls
      to fill it. 0 (the default) runs whatever is waiting at once; calls
      that arrive meanwhile form the next batch.

  Raises:
    ValueError: the policy batches its own time steps, a bad batch size, or
      a signature with unknown inner dimensions (rows must stack).
  """

  def __init__(self, policy, max_batch_size: int = 64, max_wait_us: float = 0.0):
    parts = getattr(policy, "_batching_parts", None)
    if parts is None:
      raise TypeError(f"DynamicBatchingPolicy wraps a SavedModelPyTFEagerPolicy or a "
                      f"CompiledPolicy, got {type(policy).__name__}")
    if getattr(policy, "_batch_time_steps", False):
      raise ValueError("DynamicBatchingPolicy needs the wrapped policy created with "
                       "batch_time_steps=False (it runs batches of callers)")
    if max_batch_size < 1:
      raise ValueError(f"max_batch_size: expected at least 1, got {max_batch_size}")
    parts = parts()
    self.policy = policy
    fixed = parts.fixed_batch_size
    self.max_batch_size = min(max_batch_size, fixed) if fixed else max_batch_size
    # The batch n calls run at, by n: the fixed size, or as the engine pads.
    self._padded = [fixed or parts.padded(n, self.max_batch_size)
                    for n in range(self.max_batch_size + 1)]
    self.max_wait_us = max_wait_us
    self._rows = parts.rows
    self._switch = parts.switch
    self._call_rows = parts.call_rows
    self._check_seed = parts.check_seed
    self._batch_error = parts.batch_error
    # A caller finding nobody running or waiting calls the policy directly (no
    # row gather, no packing), unless batches wait to fill or are padded to a size.
    self._lone = parts.lone if not fixed and not max_wait_us else None
    self._lock = threading.Lock()     # guards the fields below
    self._filled = threading.Condition(self._lock)
    self._pending: Deque[_Request] = collections.deque()
    self._leading = False             # a caller is running (or about to run) batches
    self._closed = False
    self._pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
    self.batches = 0                  # statistics: batches run, calls served
    self.calls = 0

  def action(self, time_step, policy_state=(), seed: Optional[Any] = None):
    """One caller's step, run in a batch with whatever calls overlap it."""
    if seed is not None:
      self._check_seed(seed)
    if self._lone is not None and not self._leading:
      with self._lock:
        alone = not self._leading and not self._closed
        if alone:
          self._leading = True
      if alone:
        return self._run_alone(time_step, policy_state)
    request = _Request(self._rows.validate(time_step, policy_state))
    lead = self._enqueue(request)
    if not lead:
      request.done.acquire()
    if lead or request.lead:
      self._lead(request)
    if request.error is not None:
      raise request.error
    return self._rows.pack_row(request.outputs, request.index)

  def _enqueue(self, request: _Request) -> bool:
    """True if the caller leads (no batch running); else `request` waits in line."""
    with self._lock:
      if self._closed:
        raise BatcherClosedError("DynamicBatchingPolicy is closed")
      if not self._leading:
        self._leading = True
        return True
      self._pending.append(request)
      if len(self._pending) + 1 >= self.max_batch_size:
        self._filled.notify()
      return False

  def _run_alone(self, time_step, policy_state):
    """The lone caller's call, straight to the policy; then whoever queued meanwhile leads."""
    try:
      step = self._switch.call(self._lone, time_step, policy_state)
    except (ValueError, TypeError):
      raise                       # bad input: the same message as in a batch
    except Exception as e:  # pylint: disable=broad-except
      raise self._batch_error(e) from None
    finally:
      self._pass_lead()
    self.batches += 1
    self.calls += 1
    return step

  async def action_async(self, time_step, policy_state=(), seed: Optional[Any] = None):
    """`action` for coroutines: batches across the coroutines (and threads) calling.

    The row is validated here, on the event loop; the coroutine then awaits
    its batch, which runs off the loop (on this batcher's thread) while the
    loop keeps taking requests. Each batch's results reach an event loop in
    one callback. Coroutines of several event loops (in several threads)
    may share one batcher. A cancelled call's row is dropped if its batch
    has not started; a result it misses is discarded, never given to
    another caller.

    Raises:
      ValueError, TypeError: bad input (as `action`).
      BatcherClosedError: `close()` was called before the call's batch ran.
    """
    if seed is not None:
      self._check_seed(seed)
    request = _Request(self._rows.validate(time_step, policy_state),
                       asyncio.get_running_loop())
    lead = self._enqueue(request)
    if not lead:
      try:
        await request.future
      except asyncio.CancelledError:
        self._cancel(request)
        raise
    if lead or request.lead:
      # Shielded: a cancelled leader must not cancel its batch before it starts
      # (the batch serves other callers, and hands the lead on when it ends).
      await asyncio.shield(asyncio.wrap_future(self._executor().submit(self._lead, request)))
    if request.error is not None:
      raise request.error
    return self._rows.pack_row(request.outputs, request.index)

  def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
    """The thread async callers' batches run on (one: one batch runs at a time)."""
    if self._pool is None:
      with self._lock:
        if self._pool is None:
          self._pool = concurrent.futures.ThreadPoolExecutor(
              max_workers=1, thread_name_prefix="dynamic-batcher")
    return self._pool

  def _cancel(self, request: _Request) -> None:
    """A coroutine was cancelled while waiting: drop its row, or pass on a lead it got."""
    with self._lock:
      try:
        self._pending.remove(request)
        return
      except ValueError:
        pass   # already in a batch, or given the lead
    if request.lead and request.future.done() and not request.future.cancelled():
      self._pass_lead()

  def get_initial_state(self, batch_size: Optional[int] = None):
    return self.policy.get_initial_state(1 if batch_size is None else batch_size)

  @property
  def mean_batch_size(self) -> float:
    return self.calls / self.batches if self.batches else 0.0

  def close(self) -> None:
    """Stops batching; calls not already in a running batch get a BatcherClosedError."""
    with self._lock:
      self._closed = True
      waiting = list(self._pending)
      self._pending.clear()
      self._filled.notify_all()
      pool, self._pool = self._pool, None
    self._finish(waiting, error=_closed_error())
    if pool is not None:
      pool.shutdown(wait=False)

  def __enter__(self) -> "DynamicBatcher":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass

  def _lead(self, own: _Request) -> None:
    """Runs one batch, `own` first, then hands the lead to the next waiting caller.

    The caller that finds no batch running leads: it takes up to
    `max_batch_size` - 1 waiting calls besides its own, runs them, and wakes
    their callers. A caller that arrives meanwhile waits, and the first of
    them leads the next batch. A lone caller so runs its own call in its own
    thread, with no hand-off.
    """
    batch = [own]
    try:
      with self._lock:
        if self.max_wait_us and len(self._pending) + 1 < self.max_batch_size \
            and not self._closed:
          deadline = time.perf_counter() + self.max_wait_us * 1e-6
          while (len(self._pending) + 1 < self.max_batch_size and not self._closed and
                 self._filled.wait(deadline - time.perf_counter())):
            pass
        while self._pending and len(batch) < self.max_batch_size:
          batch.append(self._pending.popleft())
        closed = self._closed
      if closed:
        self._finish(batch[1:], error=_closed_error())
        own.error = _closed_error()
        return
      try:
        outputs = self._switch.call(self._call_rows, [r.row for r in batch],
                                    self._padded[len(batch)])
      except BaseException as e:  # pylint: disable=broad-except
        own.error = self._batch_error(e)
        self._finish(batch[1:], error=own.error)
        if not isinstance(e, Exception):
          raise                         # e.g. KeyboardInterrupt, in the leading caller's thread
        return
      self.batches += 1
      self.calls += len(batch)
      own.outputs = outputs
      self._finish(batch[1:], outputs=outputs, first=1)
    finally:
      self._pass_lead()

  def _pass_lead(self) -> None:
    """Makes the first waiting caller lead the next batch (or notes that none is running)."""
    with self._lock:
      successor = self._pending.popleft() if self._pending else None
      self._leading = successor is not None
    if successor is not None:
      successor.lead = True
      self._wake([successor])

  def _finish(self, batch: List[_Request], outputs: Optional[list] = None,
              error: Optional[BaseException] = None, first: int = 0) -> None:
    """Hands each caller of `batch` its row of `outputs` (from row `first`), or `error`."""
    for index, request in enumerate(batch, first):
      request.outputs, request.index, request.error = outputs, index, error
    self._wake(batch)

  def _wake(self, requests: List[_Request]) -> None:
    """Wakes threads now, and each event loop's coroutines in one callback on that loop."""
    by_loop: dict = {}
    for request in requests:
      if request.loop is None:
        request.done.release()
      else:
        by_loop.setdefault(request.loop, []).append(request)
    for loop, waiting in by_loop.items():
      try:
        loop.call_soon_threadsafe(self._resolve, waiting)
      except RuntimeError:   # the loop was closed: nobody waits there any more
        if any(r.lead for r in waiting):
          self._pass_lead()

  def _resolve(self, requests: List[_Request]) -> None:
    """On a coroutine's loop: resolves its future; a lead given to a cancelled one passes on."""
    for request in requests:
      if request.future.cancelled():
        if request.lead:
          self._pass_lead()
        continue
      request.future.set_result(None)


def _closed_error() -> BatcherClosedError:
  return BatcherClosedError("DynamicBatchingPolicy was closed before this call ran")


def runtime_error(error: BaseException) -> BaseException:
  """The error every caller of a failed batch gets."""
  return RuntimeError(f"the batched call failed: {type(error).__name__}: {error}")


def padded_rows(rows: int, max_rows: int) -> int:
  """Rows padded to a power of two (at most `max_rows`): a few prepared interpreter
  sizes serve every batch, and none is resized per call."""
  return min(1 << (rows - 1).bit_length(), max(rows, max_rows))
