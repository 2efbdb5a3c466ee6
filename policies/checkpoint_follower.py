"""Follows a learner's checkpoint directory and hot-swaps the newest weights.

The learner writes `PolicySaver.save_checkpoint(<dir>/policy_checkpoint_NNNN)`
(the train step as the `_NNNN` suffix). `CheckpointFollower.poll()` applies
the newest complete checkpoint newer than the current one; checkpoints whose
index file is not there yet are still being written and are left for later,
broken ones are skipped (and retried only if their files change).

Any subdirectory whose name ends in `_NNNN` and that holds
`variables/variables.index` counts as a checkpoint of step NNNN. Listing and
change detection go through TensorFlow's file layer, so the learner's
directory can be local, `ram://`, or (with the plugins) `gs://`, `s3://`.
Polls are serialized and never apply a step older than the current one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from typing import Dict, List, Optional, Tuple

import tensorflow as tf

from policies import loading
from policies import storage

_STEP_SUFFIX = re.compile(r"_(\d+)$")

log = logging.getLogger(__name__)


def _index_file(path: str) -> str:
  return storage.join(path, loading.VARIABLES_PREFIX + ".index")


def _fingerprint(path: str) -> Tuple:
  """Changes whenever any file of the checkpoint changes.

  Sizes and modification times of every file, and a hash of the index (which
  holds the data files' checksums): some file systems (ram://) keep no times.
  """
  variables_dir = storage.join(path, "variables")
  files = []
  for name in sorted(tf.io.gfile.listdir(variables_dir)):
    stat = tf.io.gfile.stat(storage.join(variables_dir, name))
    files.append((name, stat.length, stat.mtime_nsec))
  index = hashlib.sha256(storage.read_bytes(_index_file(path))).hexdigest()
  return tuple(files) + (index,)


class CheckpointFollower:
  """Applies the newest checkpoint under `directory` to `policy`.

  Use `poll()` from your own loop, or `start()` / `stop()` (or a `with`
  block) for a background thread that polls every `interval_s` seconds.
  """

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

  def candidates(self) -> List[Tuple[int, str]]:
    """(step, path) of complete checkpoints, newest first."""
    try:
      names = tf.io.gfile.listdir(self.directory)
    except tf.errors.NotFoundError:
      log.debug("checkpoint follower: %s does not exist (yet)", self.directory)
      return []
    except tf.errors.OpError as e:
      log.warning("checkpoint follower: cannot list %s: %s", self.directory,
                  storage.first_line(e))
      return []
    found = []
    for name in names:
      name = name.rstrip("/")  # object stores list directories as "name/"
      match = _STEP_SUFFIX.search(name)
      path = storage.join(self.directory, name)
      if match and storage.exists(_index_file(path)):
        found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)

  def poll(self) -> Optional[str]:
    """Applies the newest usable checkpoint newer than the current one; returns its path.

    Concurrent calls run one after another, so an older step is never
    applied after a newer one.
    """
    with self._poll_lock:
      for step, path in self.candidates():
        if self.current_step is not None and step <= self.current_step:
          return None
        try:
          fingerprint = _fingerprint(path)
        except (OSError, ValueError, tf.errors.OpError):
          continue  # vanished or still being moved into place
        if self._broken.get(path) == fingerprint:
          continue
        try:
          self.policy.update_from_checkpoint(path)
        except (ValueError, FileNotFoundError) as e:
          log.warning("skipping checkpoint %s: %s", path, e)
          self._broken[path] = fingerprint
          continue
        self.current_step, self.current_path = step, path
        self._broken.pop(path, None)
        return path
      return None

  def start(self) -> "CheckpointFollower":
    if self._thread is None:
      self._stop.clear()
      self._thread = threading.Thread(target=self._run, name="checkpoint-follower", daemon=True)
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
        log.exception("checkpoint follower: poll failed")
      self._stop.wait(self.interval_s)

  def __enter__(self) -> "CheckpointFollower":
    return self.start()

  def __exit__(self, *exc) -> None:
    self.stop()
