"""Follows a directory of compiled checkpoints and swaps in the newest (no TensorFlow).

Layout: the learner compiles each checkpoint it publishes into its own
directory under one parent, named with the train step as suffix:

    <directory>/compiled_0000001000/   manifest.json last (compile_policy)
    <directory>/compiled_0000002000/

`CompiledFollower.poll()` applies (`CompiledPolicy.update`) the highest step
whose manifest is there and checks out; one without a manifest is still
being written and is left for later, one that fails its checks is skipped
until its files change, and a step at or below the current one is never
applied. Local paths only, as for `CompiledPolicy`.
"""

from __future__ import annotations

import os
from typing import List, Tuple

from . import compiled_format
from . import following


class CompiledFollower(following.DirectoryFollower):
  """Applies the newest compiled checkpoint under `directory` to a `CompiledPolicy`.

  Use `poll()` from your own loop, or `start()` / `stop()` (or a `with`
  block) for a background thread that polls every `interval_s` seconds.
  """

  what = "compiled checkpoint"

  def _names(self) -> List[str]:
    try:
      return os.listdir(self.directory)
    except OSError:
      return []

  def _join(self, name: str) -> str:
    return os.path.join(self.directory, name)

  def _complete(self, path: str) -> bool:
    return compiled_format.is_compiled(path)

  def _fingerprint(self, path: str) -> Tuple:
    files = []
    for name in (compiled_format.MANIFEST,) + compiled_format.FILES:
      try:
        stat = os.stat(os.path.join(path, name))
        files.append((name, stat.st_size, stat.st_mtime_ns))
      except FileNotFoundError:
        files.append((name, None, None))
    return tuple(files)

  def _apply(self, path: str) -> None:
    self.policy.update(path)
