"""Fails when a Python file in a Bazel package is named by none of its BUILD targets.

    python3 tools/checks/check_build_srcs.py

Bazel puts only declared sources into a test's runfiles, so a module left out
of `srcs` imports fine from the work tree and fails with ImportError under
`bazel test`. tools/test.sh runs this first, in a second, instead of after
the build. A file counts as named when its BUILD file quotes its path relative
to the package ("engines/lite.py") or, for `pytest_test`, names the target
after it (name = "marshal_test" for marshal_test.py).
"""

from __future__ import annotations

import pathlib
import re
import sys

ROOTS = ("policies", "tools", "tests", "native")


def unnamed_files(root: pathlib.Path) -> list[str]:
    """Paths (relative to root) of .py files no BUILD target of their package names.

    Every directory under ROOTS with a BUILD file is a package; an empty
    `__init__.py` needs no target (Bazel makes one in the runfiles).
    """
    missing = []
    for top in ROOTS:
        for build_file in sorted((root / top).rglob("BUILD")):
            package_dir = build_file.parent
            if "consumer" in package_dir.relative_to(root).parts:
                continue  # a workspace of its own (tests/consumer)
            quoted = set(re.findall(r'"([^"]+)"', build_file.read_text()))
            for path in sorted(package_dir.rglob("*.py")):
                relative = path.relative_to(package_dir)
                if _in_subpackage(package_dir, relative):
                    continue
                if relative.name == "__init__.py" and not path.read_text().strip():
                    continue
                if str(relative) in quoted or relative.stem in quoted:
                    continue
                missing.append(str(path.relative_to(root)))
    return missing


def _in_subpackage(package_dir: pathlib.Path, relative: pathlib.Path) -> bool:
    for parent in list(relative.parents)[:-1]:
        if (package_dir / parent / "BUILD").exists() or (package_dir / parent / "BUILD.bazel").exists():
            return True
    return False


def main() -> int:
    root = pathlib.Path(__file__).resolve().parents[2]
    missing = unnamed_files(root)
    for path in missing:
        print(f"{path}: no target in its package's BUILD lists it in srcs", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
