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
from typing import List, Tuple

import tensorflow as tf

from ..runtime import following
from ..saved_model import loading
from ..saved_model import storage

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


class CheckpointFollower(following.DirectoryFollower):
  """Applies the newest checkpoint under `directory` to `policy`.

  Use `poll()` from your own loop, or `start()` / `stop()` (or a `with`
  block) for a background thread that polls every `interval_s` seconds.
  """

  what = "checkpoint"
  _transient = (OSError, ValueError, tf.errors.OpError)

  def _names(self) -> List[str]:
    try:
      return tf.io.gfile.listdir(self.directory)
    except tf.errors.NotFoundError:
      log.debug("checkpoint follower: %s does not exist (yet)", self.directory)
    except tf.errors.OpError as e:
      log.warning("checkpoint follower: cannot list %s: %s", self.directory,
                  storage.first_line(e))
    return []

  def _join(self, name: str) -> str:
    return storage.join(self.directory, name)

  def _complete(self, path: str) -> bool:
    return storage.exists(_index_file(path))

  def _fingerprint(self, path: str) -> Tuple:
    return _fingerprint(path)

  def _apply(self, path: str) -> None:
    self.policy.update_from_checkpoint(path)
