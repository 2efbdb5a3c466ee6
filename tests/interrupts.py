"""Deterministic interrupts for atomicity tests: a KeyboardInterrupt at the n-th line run."""

from __future__ import annotations

import sys


def interrupt_at(n: int, files: tuple):
  """A tracer raising KeyboardInterrupt at the n-th line run in `files` (this thread only).

  Only a line's first run in each frame counts: the line event CPython emits again at the
  end of a `with` block comes before `__exit__`, so raising there would leak the lock, which
  no signal-delivered interrupt can do (those arrive at calls and backward jumps).
  """
  count, seen, frames = [0], set(), []

  def tracer(frame, event, arg):
    if not frame.f_code.co_filename.endswith(files):
      return None
    if event == "line" and (id(frame), frame.f_lineno) not in seen:
      seen.add((id(frame), frame.f_lineno))
      frames.append(frame)   # alive until the tracer goes, so ids are not reused
      count[0] += 1
      if count[0] == n:
        raise KeyboardInterrupt
    return tracer

  return tracer


def finishes_unless_interrupted(n: int, files: tuple, call, *args) -> bool:
  """Runs `call(*args)` with an interrupt at its n-th line in `files`: True if it finished,
  False if the interrupt came out of it (anything else propagates)."""
  sys.settrace(interrupt_at(n, files))
  try:
    call(*args)
    return True
  except KeyboardInterrupt:
    return False
  finally:
    sys.settrace(None)
