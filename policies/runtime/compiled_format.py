"""The compiled policy directory: its files, its manifest, and the checks on read.

Written by `policies.compile.compile_policy` (where TensorFlow is), read by
`policies.runtime.compiled.CompiledPolicy` (which needs no TensorFlow). Version 1:

    action.tflite   the LiteRT flatbuffer of the policy's `action` (builtin ops only)
    policy.json     specs, the signature's layout, what the policy samples
    values.npz      initial policy state, train step, metadata (numpy, no pickles)
    report.json     where it came from: the source's fingerprint, TensorFlow,
                    converter and LiteRT versions, and the validation report
    manifest.json   format name and version, and the size and SHA-256 of every
                    file above; written last

A reader trusts nothing it has not checked against the manifest: a directory
without one (half-written), or whose files do not match it (truncated,
corrupt, replaced), or of another format or a newer version, is refused with a
`ValueError` naming the file. Each file is read once and parsed from the bytes
that were checked.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Callable, Dict, Optional

import numpy as np

from . import compiled_checks
from . import safe_files

FORMAT = "policy_runtime.compiled_policy"
VERSION = 1

FLATBUFFER = "action.tflite"
POLICY = "policy.json"
VALUES = "values.npz"
REPORT = "report.json"
MANIFEST = "manifest.json"
FILES = (FLATBUFFER, POLICY, VALUES, REPORT)


def is_compiled(path: str) -> bool:
  """Whether `path` looks like a compiled policy directory (a local one with a manifest)."""
  return os.path.isfile(os.path.join(os.fspath(path), MANIFEST))


def manifest_bytes(files: Dict[str, bytes]) -> bytes:
  """The manifest for `files` (name -> content)."""
  entries = {name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
             for name, data in sorted(files.items())}
  return json.dumps({"format": FORMAT, "version": VERSION, "files": entries},
                    indent=1, sort_keys=True).encode()


def write(files: Dict[str, bytes], write_file: Callable[[str, bytes], None]) -> None:
  """Writes every file, then the manifest (`write_file(name, data)`)."""
  missing = set(FILES) - set(files)
  if missing:
    raise ValueError(f"a compiled policy needs {sorted(missing)}")
  for name in FILES:
    write_file(name, files[name])
  write_file(MANIFEST, manifest_bytes(files))


def values_bytes(arrays: Dict[str, np.ndarray]) -> bytes:
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  return buffer.getvalue()


class MissingFileError(FileNotFoundError, ValueError):
  """A file the manifest lists is not there (a `FileNotFoundError` and a `ValueError`)."""


# manifest.json, policy.json and report.json are small; the others are read
# with the size the manifest declares, within `safe_files.MAX_FILE_BYTES`.
MAX_JSON_BYTES = 16 * 2**20


def _read(path: str, limit: int, expected_size: Optional[int] = None) -> bytes:
  try:
    return safe_files.read_local(path, limit, expected_size, declared_by="manifest")
  except FileNotFoundError:
    raise MissingFileError(f"{path}: missing from the compiled policy") from None


class CompiledFiles:
  """The checked contents of a compiled policy directory."""

  def __init__(self, directory: str, flatbuffer: bytes, policy: dict, values: dict,
               report: dict, manifest_sha256: str, flatbuffer_sha256: str = ""):
    self.directory = directory
    self.flatbuffer = flatbuffer
    self.policy = policy
    self.values = values
    self.report = report
    self.manifest_sha256 = manifest_sha256   # names this exact compiled policy
    self.flatbuffer_sha256 = flatbuffer_sha256   # checked against the manifest


def read(directory: str) -> CompiledFiles:
  """Reads and checks a compiled policy directory (a local path).

  Every file is read whole by `safe_files.read_local` (regular files only,
  never blocking, the manifest's size checked before reading), JSON within a
  nesting limit, values.npz checked member by member before decompression
  (`compiled_checks`).

  Raises:
    FileNotFoundError: `directory` does not exist; `MissingFileError` (also a
      ValueError) for a file the manifest lists that is not there.
    ValueError: no manifest, another format or a newer version, or a file
      that is not a regular file, does not match the manifest, or does not
      parse, naming the file (and the field or member).
  """
  directory = os.fspath(directory)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"compiled policy directory not found: {directory}")
  manifest_path = os.path.join(directory, MANIFEST)
  if not os.path.exists(manifest_path):
    raise ValueError(f"{manifest_path}: missing; not a compiled policy, or one still being "
                     f"written (the manifest is written last)")
  manifest_data = _read(manifest_path, MAX_JSON_BYTES)
  manifest = compiled_checks.load_json(manifest_path, manifest_data)
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
    found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
    raise ValueError(f"{manifest_path}: expected format {FORMAT!r}, got {found!r}")
  version = manifest.get("version")
  if not isinstance(version, int) or version < 1:
    raise ValueError(f"{manifest_path}: expected a format version, got {version!r}")
  if version > VERSION:
    raise ValueError(f"{manifest_path}: format version {version} is newer than this library "
                     f"reads (up to {VERSION}); upgrade it or compile with this version")
  entries = manifest.get("files")
  if not isinstance(entries, dict):
    raise ValueError(f"{manifest_path}: expected a 'files' table, got {type(entries).__name__}")
  contents = {}
  for name in FILES:
    path = os.path.join(directory, name)
    entry = entries.get(name)
    if not isinstance(entry, dict):
      raise ValueError(f"{manifest_path}: does not list {name}")
    size, digest = entry.get("bytes"), entry.get("sha256")
    limit = safe_files.MAX_FILE_BYTES if name in (FLATBUFFER, VALUES) else MAX_JSON_BYTES
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= limit:
      raise ValueError(f"{manifest_path}: files.{name}.bytes: expected a size in [0, {limit}], "
                       f"got {size!r:.80}")
    if not isinstance(digest, str):
      raise ValueError(f"{manifest_path}: files.{name}.sha256: expected a hex string, got "
                       f"{type(digest).__name__}")
    data = _read(path, limit, size)
    if hashlib.sha256(data).hexdigest() != digest:
      raise ValueError(f"{path}: SHA-256 does not match the manifest: corrupt or replaced")
    contents[name] = data
  policy_path = os.path.join(directory, POLICY)
  policy = compiled_checks.load_json(policy_path, contents[POLICY])
  compiled_checks.check_policy_fields(policy, policy_path)
  return CompiledFiles(
      directory=directory,
      flatbuffer=contents[FLATBUFFER],
      policy=policy,
      values=compiled_checks.load_npz(os.path.join(directory, VALUES), contents[VALUES]),
      report=compiled_checks.load_json(os.path.join(directory, REPORT), contents[REPORT]),
      manifest_sha256=hashlib.sha256(manifest_data).hexdigest(),
      flatbuffer_sha256=entries[FLATBUFFER]["sha256"],
  )
