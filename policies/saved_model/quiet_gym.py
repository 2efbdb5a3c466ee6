"""Imported first by every module that imports TF-Agents: imports gym without its banner.

TF-Agents imports gym unconditionally, and gym 0.23 prints "Gym has been
unmaintained since 2022 ..." when imported (`compat.import_gym_without_banner`).
"""

from . import compat

compat.import_gym_without_banner()
