"""Following a directory of published weights, newest first, never back (no TensorFlow).

`DirectoryFollower` is the polling machinery shared by `CheckpointFollower`
(PolicySaver checkpoints, through TF's file layer) and `CompiledFollower`
(compiled policy directories, local): every subdirectory whose name ends in
`_NNNN` (the train step) and that is complete counts as step NNNN. `poll()`
applies the newest one newer than the current step; incomplete ones are left
for later, broken ones are skipped (and retried only if their files change).
Polls are serialized and never apply a step older than the current one.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Dict, List, Optional, Tuple

_STEP_SUFFIX = re.compile(r"_(\d+)$")

log = logging.getLogger("policy_runtime")


class DirectoryFollower:
  """Applies the newest complete step under `directory` (see module docstring).

  Use `poll()` from your own loop, or `start()` / `stop()` (or a `with`
  block) for a background thread that polls every `interval_s` seconds.
  Subclasses say how to list, check, fingerprint and apply a step.
  """

  what = "step"
  # Errors of `_fingerprint` that mean "vanished or being moved in": skip for now.
  _transient: Tuple[type, ...] = (OSError, ValueError)

  def __init__(self, policy, directory: str, interval_s: float = 10.0):
    self.policy = policy
    self.directory = os.fspath(directory)
    self.interval_s = interval_s
    self.current_step: Optional[int] = None
    self.current_path: Optional[str] = None
    self._broken: Dict[str, Tuple] = {}   # path -> fingerprint when it failed
    self._poll_lock = threading.Lock()     # one poll at a time
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None

  # -- What a subclass provides ------------------------------------------------------

  def _names(self) -> List[str]:
    """The entries of `directory` ([] if it cannot be listed)."""
    raise NotImplementedError

  def _join(self, name: str) -> str:
    raise NotImplementedError

  def _complete(self, path: str) -> bool:
    raise NotImplementedError

  def _fingerprint(self, path: str) -> Tuple:
    """Changes whenever any of the step's files changes."""
    raise NotImplementedError

  def _apply(self, path: str) -> None:
    """Applies the step (raises ValueError / FileNotFoundError if it cannot)."""
    raise NotImplementedError

  # -- Following ----------------------------------------------------------------------

  def candidates(self) -> List[Tuple[int, str]]:
    """(step, path) of complete steps, newest first."""
    found = []
    for name in self._names():
      name = name.rstrip("/")  # object stores list directories as "name/"
      match = _STEP_SUFFIX.search(name)
      path = self._join(name)
      if match and self._complete(path):
        found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)

  def poll(self) -> Optional[str]:
    """Applies the newest usable step newer than the current one; returns its path.

    Concurrent calls run one after another, so an older step is never
    applied after a newer one.
    """
    with self._poll_lock:
      for step, path in self.candidates():
        if self.current_step is not None and step <= self.current_step:
          return None
        try:
          fingerprint = self._fingerprint(path)
        except self._transient:
          continue
        if self._broken.get(path) == fingerprint:
          continue
        try:
          self._apply(path)
        except (ValueError, FileNotFoundError) as e:
          log.warning("skipping %s %s: %s", self.what, path, e)
          self._broken[path] = fingerprint
          continue
        self.current_step, self.current_path = step, path
        self._broken.pop(path, None)
        return path
      return None

  def start(self):
    if self._thread is None:
      self._stop.clear()
      self._thread = threading.Thread(target=self._run, name=f"{self.what}-follower",
                                      daemon=True)
      self._thread.start()
    return self

  def stop(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None

  def _run(self) -> None:
    while not self._stop.is_set():
      try:
        self.poll()
      except Exception:  # pylint: disable=broad-except
        log.exception("%s follower: poll failed", self.what)
      self._stop.wait(self.interval_s)

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()
