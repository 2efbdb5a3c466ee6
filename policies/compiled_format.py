"""The compiled policy directory: its files, its manifest, and the checks on read.

Written by `policies.compile.compile_policy` (where TensorFlow is), read by
`policies.compiled.CompiledPolicy` (which needs no TensorFlow). Version 1:

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
from typing import Callable, Dict

import numpy as np

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


def _read(path: str) -> bytes:
  try:
    with open(path, "rb") as f:
      return f.read()
  except FileNotFoundError:
    raise ValueError(f"{path}: missing from the compiled policy") from None
  except OSError as e:
    raise ValueError(f"{path}: cannot be read: {e.strerror or e}") from None


def _json(path: str, data: bytes):
  try:
    return json.loads(data.decode())
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None


class CompiledFiles:
  """The checked contents of a compiled policy directory."""

  def __init__(self, directory: str, flatbuffer: bytes, policy: dict, values: dict,
               report: dict, manifest_sha256: str):
    self.directory = directory
    self.flatbuffer = flatbuffer
    self.policy = policy
    self.values = values
    self.report = report
    self.manifest_sha256 = manifest_sha256   # names this exact compiled policy


def read(directory: str) -> CompiledFiles:
  """Reads and checks a compiled policy directory (a local path).

  Raises:
    FileNotFoundError: `directory` does not exist.
    ValueError: no manifest, another format or a newer version, or a file
      that is missing or does not match the manifest, naming the file.
  """
  directory = os.fspath(directory)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"compiled policy directory not found: {directory}")
  manifest_path = os.path.join(directory, MANIFEST)
  if not os.path.exists(manifest_path):
    raise ValueError(f"{manifest_path}: missing; not a compiled policy, or one still being "
                     f"written (the manifest is written last)")
  manifest_data = _read(manifest_path)
  manifest = _json(manifest_path, manifest_data)
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
    data = _read(path)
    if len(data) != entry.get("bytes"):
      raise ValueError(f"{path}: expected {entry.get('bytes')} bytes (manifest), got "
                       f"{len(data)}: truncated or replaced")
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
      raise ValueError(f"{path}: SHA-256 does not match the manifest: corrupt or replaced")
    contents[name] = data
  values_path = os.path.join(directory, VALUES)
  try:
    with np.load(io.BytesIO(contents[VALUES]), allow_pickle=False) as archive:
      values = {key: archive[key] for key in archive.files}
  except (ValueError, OSError) as e:
    raise ValueError(f"{values_path}: not a numpy archive of plain arrays ({e})") from None
  return CompiledFiles(
      directory=directory,
      flatbuffer=contents[FLATBUFFER],
      policy=_json(os.path.join(directory, POLICY), contents[POLICY]),
      values=values,
      report=_json(os.path.join(directory, REPORT), contents[REPORT]),
      manifest_sha256=hashlib.sha256(manifest_data).hexdigest(),
  )
