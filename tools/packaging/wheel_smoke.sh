#!/usr/bin/env bash
# Builds the wheels (Python 3.11 and 3.13) from a copy of the checkout, installs
# them into fresh venvs outside it, and acts there:
#   3.11, policy-runtime[tensorflow]: the drop-in class on both backends, and
#       compile_policy (tools/packaging/smoke_tf.py);
#   3.13, policy-runtime (numpy + LiteRT, no TensorFlow): a CompiledPolicy of
#       that compiled policy, with the same actions (smoke_tffree.py).
#   bash tools/packaging/wheel_smoke.sh        (tools/test.sh runs it)
# Packages come from the index (pip's cache after tools/setup.sh), resolved as
# the README's `pip install` would: the wheel's own requirements and extras.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir "$work/src" "$work/dist"
cp -r "$root/pyproject.toml" "$root/setup.py" "$root/README.md" "$root/policies" "$root/native" \
  "$work/src/"
pip_quiet=(-q --disable-pip-version-check)

# quietly COMMAND...: runs it, and shows its output only if it fails (without
# pip's notes about index locations this machine's configuration names).
quietly() {
  local log
  log="$(mktemp)"
  if ! "$@" >"$log" 2>&1; then
    grep -v '^WARNING: Location' "$log" >&2
    rm -f "$log"
    return 1
  fi
  rm -f "$log"
}

wheel_for() {   # wheel_for PYTHON: builds the wheel for that interpreter, prints its path
  local py="$1" tag
  tag="$("$py" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')"
  NPY_NUM_BUILD_JOBS=2 quietly "$py" -m pip wheel "${pip_quiet[@]}" --no-deps -w "$work/dist" \
    "$work/src"
  ls "$work"/dist/policy_runtime-*-"$tag"-*.whl
}

# The interpreters tools/setup.sh found (a venv made from a venv's python uses
# its base interpreter: nothing of the project's venvs carries over).
bash "$root/tools/setup.sh" >&2
py311="$root/.venv/bin/python"
py313="$root/.venv-tffree/bin/python"

echo "wheel_smoke: building the wheels" >&2
wheel311="$(wheel_for "$py311")"
wheel313="$(wheel_for "$py313")"
echo "wheel_smoke: $(basename "$wheel311") $(basename "$wheel313")" >&2

"$py311" -m venv "$work/venv-tf"
quietly "$work/venv-tf/bin/python" -m pip install "${pip_quiet[@]}" "${wheel311}[tensorflow]" pytest
"$py313" -m venv "$work/venv-tffree"
quietly "$work/venv-tffree/bin/python" -m pip install "${pip_quiet[@]}" "$wheel313" pytest

# Outside the checkout: only the installed wheels can be imported.
mkdir "$work/smoke"
cp "$root"/tools/packaging/{conftest.py,smoke_tf.py,smoke_tffree.py} "$work/smoke/"
cd "$work/smoke"
"$work/venv-tf/bin/python" -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning smoke_tf.py \
  --policy="$root/tools/cli/default_policy" --compiled="$work/compiled" --actions="$work/actions.npy"
"$work/venv-tffree/bin/python" -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning smoke_tffree.py \
  --compiled="$work/compiled" --actions="$work/actions.npy"
