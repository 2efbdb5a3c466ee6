"""Which `libLiteRt.so` the native LiteRT engine loads, if any (no TensorFlow).

The native engine (`native/litert_engine.cc`) calls LiteRT's C API in the
installed `ai-edge-litert` wheel's `libLiteRt.so`. Its declarations of the
C API's types were checked against the versions in `CHECKED_VERSIONS`; any
other version, or a wheel without the library, leaves LiteRT on its Python
interpreter, with the reason logged.

`POLICIES_LITERT_LIBRARY` overrides the search: a path to load instead (no
version check: the one who sets it vouches for it), or an empty string for
no native engine.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
from typing import NamedTuple, Optional

LIBRARY_ENV = "POLICIES_LITERT_LIBRARY"
CHECKED_VERSIONS = ("2.3.",)   # version prefixes of ai-edge-litert


class Library(NamedTuple):
  """The library to load (`path`), or why there is none (`reason`)."""
  path: Optional[str]
  reason: Optional[str] = None


def version_reason(version: str) -> Optional[str]:
  """Why ai-edge-litert `version` is not loaded (None: it is one of CHECKED_VERSIONS)."""
  if version.startswith(CHECKED_VERSIONS):
    return None
  return (f"ai-edge-litert {version} is not a version the native engine was checked against "
          f"({', '.join(v + '*' for v in CHECKED_VERSIONS)})")


def find() -> Library:
  """The installed ai-edge-litert's libLiteRt.so, or the reason not to use one."""
  override = os.environ.get(LIBRARY_ENV)
  if override is not None:
    return Library(override) if override else Library(None, f"{LIBRARY_ENV} is empty")
  return _installed()


@functools.lru_cache(maxsize=None)
def _installed() -> Library:
  """The installed wheel's library (looked up once: each model made on a push asks)."""
  try:
    version = importlib.metadata.version("ai-edge-litert")
  except importlib.metadata.PackageNotFoundError:
    return Library(None, "ai-edge-litert is not installed")
  reason = version_reason(version)
  if reason:
    return Library(None, reason)
  spec = importlib.util.find_spec("ai_edge_litert")
  locations = list(spec.submodule_search_locations or ()) if spec else []
  if not locations:
    return Library(None, "the ai_edge_litert package is not found")
  path = os.path.join(locations[0], "libLiteRt.so")
  if not os.path.isfile(path):
    return Library(None, f"ai-edge-litert {version} has no {path}")
  return Library(path)
