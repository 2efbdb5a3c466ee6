"""LiteRT conversion in a child process, so a converter crash or hang cannot take the caller down.

TF's `TFLiteConverter` runs MLIR passes over an untrusted graph; some inputs
kill the process or never finish. Conversions therefore run in one persistent
child per process (`python .../lite_converter.py`), started on
the first conversion (a load served from the conversion cache never starts
it) and reused after, under an address-space limit (RLIMIT_AS) and a time
limit per conversion. A crash or a timeout is a ValueError naming the model;
the child is then replaced on the next conversion. (Forking the caller is not
an option: TF's thread pools do not survive a fork, and the converter hangs.)

Protocol on the child's stdin/stdout: length-prefixed pickles of
`(files, what, modules)` (the SavedModel's files by relative path, and the
modules to import first: see `_type_spec_modules`) answered by
`("ok", flatbuffer)` or `("error", message)`.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pickle
import re
import resource
import select
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Dict, Optional

TIMEOUT_ENV = "POLICY_RUNTIME_CONVERT_TIMEOUT_S"
MEMORY_ENV = "POLICY_RUNTIME_CONVERT_MEMORY_GB"
DEFAULT_TIMEOUT_S = 300.0
DEFAULT_MEMORY_GB = 16.0     # address space: TF reserves GBs it never touches

_BLOCKING_OP = re.compile(r"'tf\.(\w+)' op is neither a custom op nor a flex op")
_HEADER = struct.Struct("<Q")

log = logging.getLogger("policy_runtime")


class _Child:
  """The converter process and its pipes."""

  def __init__(self, memory_gb: float):
    # memory_gb <= 0: no address-space limit (AddressSanitizer, as tools/checks/sanitize.sh runs
    # it, reserves terabytes of address space and aborts under any limit).
    limit = int(memory_gb * 2**30) if memory_gb > 0 else None
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    if limit is not None and hard != resource.RLIM_INFINITY:
      limit = min(limit, hard)   # a limit cannot be raised, only kept or lowered

    def limits():
      if limit is not None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard if hard != resource.RLIM_INFINITY
                                                else limit))
      resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    self.stderr = tempfile.TemporaryFile()
    self.process = subprocess.Popen(
        # By file, not `-m`: the child imports nothing of ours, so no other
        # `policies` package on the path can stand in for this one.
        [sys.executable, os.path.abspath(__file__)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=self.stderr, preexec_fn=limits, env=env)

  def ask(self, request: bytes, timeout: float) -> Optional[bytes]:
    """The answer, or None if the child died or passed `timeout` (it is then killed)."""
    try:
      self.process.stdin.write(_HEADER.pack(len(request)) + request)
      self.process.stdin.flush()
    except OSError:
      return None
    deadline = time.monotonic() + timeout
    out = self.process.stdout.fileno()
    buffer = b""
    need = None
    while need is None or len(buffer) < need:
      remaining = deadline - time.monotonic()
      if remaining <= 0 or not select.select([out], [], [], remaining)[0]:
        self.kill()
        return None
      chunk = os.read(out, 1 << 20)
      if not chunk:
        return None
      buffer += chunk
      if need is None and len(buffer) >= _HEADER.size:
        need = _HEADER.size + _HEADER.unpack(buffer[:_HEADER.size])[0]
    return buffer[_HEADER.size:need]

  def how_it_ended(self) -> str:
    code = self.process.wait()
    self.stderr.seek(0)
    tail = self.stderr.read().decode(errors="replace").strip().splitlines()[-1:]
    how = f"signal {-code}" if code < 0 else f"exit status {code}"
    return how + (f" ({tail[0]})" if tail else "")

  def kill(self) -> None:
    with contextlib.suppress(OSError):
      self.process.kill()
    self.process.wait()

  def close(self) -> None:
    with contextlib.suppress(OSError):
      self.process.stdin.close()
    with contextlib.suppress(Exception):
      self.process.wait(timeout=5)
    if self.process.poll() is None:
      self.kill()


_lock = threading.Lock()
_child: Optional[_Child] = None


def convert_files(files: Dict[str, bytes], what: str, timeout: Optional[float] = None,
                  memory_gb: Optional[float] = None, precision: str = "fp32") -> bytes:
  """The `action` signature of the SavedModel made of `files` converted, in the child.

  `precision`: "fp32", or "int8" (dynamic-range quantization: weights of
  fully connected and convolution layers stored as int8 per channel,
  activations quantized per call).

  Raises:
    ValueError: naming `what`: the converter refused the graph (naming the
      ops with no LiteRT builtin, when that is why), crashed, or passed the time limit.
  """
  global _child  # pylint: disable=global-statement
  timeout = timeout or float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
  if memory_gb is None:
    memory_gb = float(os.environ.get(MEMORY_ENV, DEFAULT_MEMORY_GB))
  request = pickle.dumps((files, what, _type_spec_modules(), precision),
                         protocol=pickle.HIGHEST_PROTOCOL)
  with _lock:
    if _child is None or _child.process.poll() is not None:
      _child = _Child(memory_gb)
    child = _child
    started = time.monotonic()
    answer = child.ask(request, timeout)
    if answer is None:
      _child = None
      if time.monotonic() - started >= timeout:
        child.kill()
        raise ValueError(f"{what}: the LiteRT conversion did not finish in {timeout:g} s")
      raise ValueError(f"{what}: the LiteRT converter crashed ({child.how_it_ended()})")
  kind, value = pickle.loads(answer)   # our own child's answer
  if kind == "ok":
    return value
  raise ValueError(value)


def _type_spec_modules() -> list:
  """The modules, imported here, that registered the TypeSpecs TF knows here.

  An export names the TypeSpecs of its outputs (TF-Agents' `SquashToSpecNormal`,
  TFP's distributions), and TF's loader decodes only registered ones. They are
  registered by importing the module that defines them, which this process did
  and the child has not; the child imports the same modules (ours, already
  trusted here: never a name taken from the model).
  """
  try:
    from tensorflow.python.framework import type_spec_registry  # pylint: disable=import-outside-toplevel
    names = list(type_spec_registry._NAME_TO_TYPE_SPEC)  # pylint: disable=protected-access
  except (ImportError, AttributeError):
    return []
  modules = set()
  for name in names:
    parts = name.split(".")[:-1]
    while parts and ".".join(parts) not in sys.modules:
      parts.pop()
    module = ".".join(parts)
    if module and not module.startswith(("tensorflow.", "tensorflow_probability.")) \
        and module not in ("tensorflow", "tensorflow_probability"):
      modules.add(module)
  return sorted(modules)


def shutdown() -> None:
  """Stops the converter child (if any); the next conversion starts another."""
  global _child  # pylint: disable=global-statement
  with _lock:
    if _child is not None:
      _child.close()
      _child = None


# -- The child ---------------------------------------------------------------------


def _convert_in_child(files: Dict[str, bytes], what: str, precision: str):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  directory = f"ram://policy_runtime_convert/{uuid.uuid4().hex}"
  try:
    for name, data in files.items():
      path = f"{directory}/{name}"
      tf.io.gfile.makedirs(path.rsplit("/", 1)[0])
      with tf.io.gfile.GFile(path, "wb") as f:
        f.write(data)
    converter = tf.lite.TFLiteConverter.from_saved_model(directory, signature_keys=["action"])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if precision == "int8":
      converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return "ok", converter.convert()
  except Exception as e:  # pylint: disable=broad-except
    ops = sorted(set(_BLOCKING_OP.findall(str(e))))
    if ops:
      return "error", (f"{what}: cannot convert 'action' to LiteRT with builtin ops only; "
                       f"no LiteRT builtin for: {', '.join(ops)}")
    lines = [l for l in str(e).replace(directory, what).splitlines() if l.strip()]
    return "error", (f"{what}: cannot convert 'action' to LiteRT: "
                     f"{lines[0].strip() if lines else type(e).__name__}")
  finally:
    with contextlib.suppress(Exception):
      tf.io.gfile.rmtree(directory)


def _serve() -> None:
  """Answers requests on stdin until it closes."""
  stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
  sys.stdout = sys.stderr   # nothing else may write to the answer pipe
  logging.getLogger("absl").setLevel(logging.ERROR)
  # pylint: disable=import-outside-toplevel,unused-import
  import tensorflow as tf
  tf.get_logger().setLevel(logging.ERROR)
  # PolicySaver exports name TFP's TypeSpecs, which must be registered to decode.
  import tensorflow_probability  # noqa: F401
  while True:
    header = stdin.read(_HEADER.size)
    if len(header) < _HEADER.size:
      return
    files, what, modules, precision = pickle.loads(
        stdin.read(_HEADER.unpack(header)[0]))  # our parent's
    for module in modules:
      if module not in sys.modules:
        with contextlib.suppress(Exception):
          importlib.import_module(module)
    answer = pickle.dumps(_convert_in_child(files, what, precision),
                          protocol=pickle.HIGHEST_PROTOCOL)
    stdout.write(_HEADER.pack(len(answer)) + answer)
    stdout.flush()


if __name__ == "__main__":
  _serve()
