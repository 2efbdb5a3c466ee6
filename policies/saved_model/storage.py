"""Files through TensorFlow's file layer, so every path TensorFlow reads works.

Local paths, `ram://` (TF's in-memory file system) and, with TF's plugins,
`gs://`, `s3://`, `hdfs://`: `os.path` and `open()` see none but the first.
Every read of the library goes through here or through TF's own readers.
"""

from __future__ import annotations

import os
import re

import tensorflow as tf

from ..runtime import safe_files


def first_line(error: BaseException) -> str:
  """The line of an error message worth showing (TF's graph errors bury it)."""
  lines = [_FUNCTION_NODE.sub("", line).strip() for line in str(error).splitlines()]
  useful = [line for line in lines if line and not line.startswith(
      ("Graph execution error", "Detected at node", "<stack traces", "[[", "File "))]
  return useful[0] if useful else type(error).__name__


# TF's prefix naming the traced function an op error came from.
_FUNCTION_NODE = re.compile(r"\{\{function_node [^}]*\}\}\s*")


def join(path: str, *parts: str) -> str:
  """Joins path parts for any file system TF reads (local, ram://, gs://, ...)."""
  return "/".join([path.rstrip("/")] + [p.strip("/") for p in parts])


def is_dir(path: str) -> bool:
  try:
    return tf.io.gfile.isdir(path)
  except tf.errors.OpError:  # e.g. a scheme with no file system registered
    return False


def exists(path: str) -> bool:
  try:
    return tf.io.gfile.exists(path)
  except tf.errors.OpError:
    return False


def is_file(path: str) -> bool:
  return exists(path) and not is_dir(path)


MAX_FILE_BYTES = safe_files.MAX_FILE_BYTES


def is_local(path: str) -> bool:
  """Whether `path` names a local file (no `scheme://`)."""
  return "://" not in path


def read_bytes(path: str, limit: int = None) -> bytes:
  """A whole regular file of at most `limit` bytes (default `MAX_FILE_BYTES`).

  Local paths are checked with `os.stat`/`fstat`: symlinks are followed only
  to regular files; FIFOs, devices, sockets and directories are refused
  naming the path, and nothing waits on them (opened non-blocking). Other
  file systems (ram://, gs://, ...) are read through TF's file layer.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: naming `path`: not a regular file, larger than `limit`, or unreadable.
  """
  limit = MAX_FILE_BYTES if limit is None else limit
  if is_local(path):
    return safe_files.read_local(path, limit)
  try:
    if tf.io.gfile.isdir(path):
      raise ValueError(f"cannot read {path}: it is a directory, not a regular file")
    size = tf.io.gfile.stat(path).length
    if size > limit:
      raise ValueError(f"cannot read {path}: {size} bytes, more than the limit of {limit}")
    with tf.io.gfile.GFile(path, "rb") as f:
      data = f.read(limit + 1)
  except tf.errors.NotFoundError:
    raise FileNotFoundError(f"file not found: {path}") from None
  except tf.errors.OpError as e:
    raise ValueError(f"cannot read {path}: {first_line(e)}") from None
  if len(data) > limit:
    raise ValueError(f"cannot read {path}: more than the limit of {limit} bytes")
  return data


def write_bytes(path: str, data: bytes) -> None:
  """Writes a whole file (making its directory); ValueError naming it on failure."""
  try:
    tf.io.gfile.makedirs(os.path.dirname(path) or ".")
    with tf.io.gfile.GFile(path, "wb") as f:
      f.write(data)
  except tf.errors.OpError as e:
    raise ValueError(f"cannot write {path}: {first_line(e)}") from None


def copy_tree(source: str, target: str) -> None:
  """Copies a directory tree."""
  for root, _, files in tf.io.gfile.walk(source):
    relative = root[len(source):].strip("/")
    destination = join(target, relative) if relative else target
    tf.io.gfile.makedirs(destination)
    for name in files:
      tf.io.gfile.copy(join(root, name), join(destination, name), overwrite=True)


def remove_tree(path: str) -> None:
  """Removes a directory tree if it is there; never raises (runs at interpreter exit too)."""
  try:
    if tf.io.gfile.exists(path):
      tf.io.gfile.rmtree(path)
  except Exception:  # pylint: disable=broad-except
    pass
