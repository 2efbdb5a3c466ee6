"""What differs between the supported stacks, resolved once, at import.

The library runs on TF-Agents' pinned stack (TF 2.15, protobuf 4, numpy 1.26,
gym 0.23) and on today's (TF 2.21, protobuf 7, numpy 2, Gymnasium). Every
place where the two need different code asks this module, so the choice is
made in one place and both branches are tested (one per stack in CI).
"""

from __future__ import annotations

import importlib.util
import sys

from google.protobuf import descriptor as _descriptor

# protobuf 7 removed `FieldDescriptor.label`; protobuf 5.28+ has `is_repeated`.
if hasattr(_descriptor.FieldDescriptor, "is_repeated"):
  def is_repeated(field: _descriptor.FieldDescriptor) -> bool:
    """Whether a protobuf message field is repeated (a list or a map)."""
    return field.is_repeated
else:
  def is_repeated(field: _descriptor.FieldDescriptor) -> bool:
    """Whether a protobuf message field is repeated (a list or a map)."""
    return field.label == _descriptor.FieldDescriptor.LABEL_REPEATED


def import_gym_without_banner() -> None:
  """Imports gym (if installed) without the banner its `gym_notices` prints.

  TF-Agents imports gym unconditionally (`tf_agents.system`), and gym 0.23
  prints "Gym has been unmaintained since 2022 ..." on import, so every user
  of TF-Agents sees it, whether or not they use gym. Importing gym first,
  with `gym_notices` hidden for that one import, keeps it quiet; nothing else
  changes (the user's own gym environments work as before).
  """
  if "gym" in sys.modules or importlib.util.find_spec("gym") is None:
    return
  missing = object()
  saved = sys.modules.get("gym_notices", missing)
  sys.modules["gym_notices"] = None   # gym's notice import fails, and gym ignores that
  try:
    import gym  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  finally:
    if saved is missing:
      del sys.modules["gym_notices"]
    else:
      sys.modules["gym_notices"] = saved
