"""Starts the local Ray instance that evaluation runs on when no cluster is given.

    from policy_runtime.policies.scale_out import local_ray
    with local_ray.instance(num_cpus=2):
      ...   # evaluation.evaluate(...) calls here share this instance

Ray 2.60 starts a local instance with token authentication and, unless told
otherwise, keeps the token in `~/.ray/auth_token`, creating it. Where that
home is not writable (Bazel runs tests without `$HOME`, so Python falls back to
the account's home, which the sandbox keeps read-only) `ray.init()` fails with
`OSError: [Errno 30] Read-only file system`. So when nothing says where the
token is (`RAY_AUTH_MODE`, `RAY_AUTH_TOKEN`, `RAY_AUTH_TOKEN_PATH`, or an
existing `~/.ray/auth_token`), this module makes one token for the process, in
a private temporary directory (mode 0700, file 0600, removed at exit), and
points `RAY_AUTH_TOKEN_PATH` at it for the rest of the process. Authentication
stays on. One token per process, because Ray caches the token it first read.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import secrets
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Iterator, Optional

import ray

# Environment variables through which a user tells Ray about authentication.
AUTH_ENV_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"

_OPTIONS = dict(logging_level=logging.ERROR, log_to_driver=False, include_dashboard=False)
_OBJECT_STORE_BYTES = 100 * 2**20

_lock = threading.Lock()
_private_token_path: Optional[str] = None


def _default_token_file() -> Optional[Path]:
  """`~/.ray/auth_token` if it is a readable file, else None."""
  try:
    path = Path.home() / ".ray" / "auth_token"
    return path if path.is_file() and os.access(path, os.R_OK) else None
  except (OSError, RuntimeError):   # RuntimeError: no home at all
    return None


def private_token_path() -> str:
  """This process's token file, made on first use (0700 directory, 0600 file)."""
  global _private_token_path
  with _lock:
    if _private_token_path is None:
      directory = tempfile.mkdtemp(prefix="policy_runtime_ray_")   # mode 0700
      path = os.path.join(directory, "auth_token")
      fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
      with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
      atexit.register(shutil.rmtree, directory, ignore_errors=True)
      _private_token_path = path
    return _private_token_path


def configure_token() -> Optional[str]:
  """Points Ray at this process's private token unless the user configured one.

  Returns:
    The private token file in use, or None if Ray's own configuration (an
    environment variable or `~/.ray/auth_token`) applies.
  """
  if any(os.environ.get(name) for name in AUTH_ENV_VARS if name != TOKEN_PATH_ENV):
    return None
  current = os.environ.get(TOKEN_PATH_ENV)
  if current and current != _private_token_path:
    return None
  if not current and _default_token_file() is not None:
    return None
  path = private_token_path()
  os.environ[TOKEN_PATH_ENV] = path   # read by the driver now and by every Ray process later
  return path


def start(num_cpus: int) -> None:
  """Starts a local Ray instance with `num_cpus` CPUs for this process.

  Token authentication stays on; see the module docstring for where the token
  lives.
  """
  os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
  configure_token()
  ray.init(num_cpus=num_cpus, object_store_memory=_OBJECT_STORE_BYTES, **_OPTIONS)


def connect(address: str) -> None:
  """Joins an existing Ray cluster (e.g. "auto", "ray://head:10001") as Ray does."""
  os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
  ray.init(address=address, **_OPTIONS)


@contextlib.contextmanager
def instance(num_cpus: int = 2) -> Iterator[None]:
  """A local Ray instance for the duration of the block, shut down afterwards."""
  start(num_cpus)
  try:
    yield
  finally:
    ray.shutdown()
