"""Reading a whole local file from an untrusted directory, without TensorFlow.

A hostile directory may hold a FIFO (an open or read that waits forever), a
symlink to a device (`/dev/zero`: endless bytes), or a file far larger than
what it claims to be. `read_local` reads only regular files (symlinks are
followed only to them), never blocks, and checks the size before reading.
Used by `policies.saved_model.storage` (SavedModels) and `policies.runtime.compiled_format`.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Optional

# The largest file the library reads whole (saved_model.pb, checkpoint files,
# assets, compiled files): a limit, so a hostile directory cannot make a load
# take all memory.
MAX_FILE_BYTES = 2 * 2**30


def read_local(path: str, limit: int = MAX_FILE_BYTES, expected_size: Optional[int] = None,
               declared_by: str = "declared") -> bytes:
  """The whole regular file `path`, of at most `limit` bytes (and exactly `expected_size`,
  which `declared_by` declared: named in the error).

  Raises:
    FileNotFoundError: `path` does not exist (naming it).
    ValueError: naming `path`: not a regular file (a FIFO, a device, a
      socket, a directory), larger than `limit`, not `expected_size` bytes,
      or unreadable.
  """
  try:
    before = os.stat(path)
  except FileNotFoundError:
    raise FileNotFoundError(f"file not found: {path}") from None
  except OSError as e:
    raise ValueError(f"cannot read {path}: {e.strerror}") from None
  _check_regular(path, before, limit, expected_size, declared_by)
  try:
    # O_NONBLOCK: a FIFO swapped in after the stat cannot block the open.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
  except OSError as e:
    if e.errno == errno.ENOENT:
      raise FileNotFoundError(f"file not found: {path}") from None
    raise ValueError(f"cannot read {path}: {e.strerror}") from None
  try:
    _check_regular(path, os.fstat(fd), limit, expected_size, declared_by)   # what was opened
    chunks, total = [], 0
    while True:
      chunk = os.read(fd, min(1 << 24, limit + 1 - total))
      if not chunk:
        break
      chunks.append(chunk)
      total += len(chunk)
      if total > limit:
        raise ValueError(f"cannot read {path}: more than the limit of {limit} bytes")
    data = b"".join(chunks)
  except OSError as e:
    raise ValueError(f"cannot read {path}: {e.strerror}") from None
  finally:
    os.close(fd)
  if expected_size is not None and len(data) != expected_size:   # it changed while read
    raise ValueError(f"{path}: expected {expected_size} bytes ({declared_by}), got "
                     f"{len(data)}: truncated or replaced")
  return data


def _check_regular(path: str, info: os.stat_result, limit: int,
                   expected_size: Optional[int] = None, declared_by: str = "") -> None:
  if not stat.S_ISREG(info.st_mode):
    kind = ("a directory" if stat.S_ISDIR(info.st_mode) else
            "a FIFO" if stat.S_ISFIFO(info.st_mode) else
            "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else
            "a socket" if stat.S_ISSOCK(info.st_mode) else "not a file")
    raise ValueError(f"cannot read {path}: it is {kind}, not a regular file")
  if info.st_size > limit:
    raise ValueError(f"cannot read {path}: {info.st_size} bytes, more than the limit of "
                     f"{limit}")
  if expected_size is not None and info.st_size != expected_size:
    raise ValueError(f"{path}: expected {expected_size} bytes ({declared_by}), got {info.st_size}: "
                     f"truncated or replaced")
