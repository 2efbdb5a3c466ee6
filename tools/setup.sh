#!/usr/bin/env bash
# Idempotent set-up: Bazel (Debian's bazel-bootstrap) and one venv per tested stack:
#   .venv        Python 3.11, requirements.txt (TF-Agents' pinned stack)
#   .venv-py313  Python 3.13, requirements-py313.txt, then requirements-py313-no-deps.txt
#   .venv-tffree Python 3.13, requirements-tffree.txt (compiled policies, no TensorFlow)
#   .venv-peers  with --peers only: Python 3.11, requirements.txt and
#                tools/benchmarks/requirements-peers.txt (tools/benchmarks/peers.py)
# Quiet when nothing is missing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

die() { echo "tools/setup.sh: $*" >&2; exit 1; }

peers=""
for arg in "$@"; do
  case "$arg" in
    --peers) peers=1 ;;
    *) die "unknown argument $arg (the only one is --peers)" ;;
  esac
done

need_apt=()
command -v bazel >/dev/null 2>&1 || need_apt+=(bazel-bootstrap)
[ -d /usr/share/bazel/rules/java ] || need_apt+=(bazel-rules-java)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]} with apt-get" >&2
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq >/dev/null \
    || die "apt-get update failed; install ${need_apt[*]} by hand"
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${need_apt[@]}" >/dev/null \
    || die "could not install ${need_apt[*]} (Bazel 4.2.3 from Debian's bazel-bootstrap is required)"
  command -v bazel >/dev/null 2>&1 || die "bazel is still missing after installing bazel-bootstrap"
fi

# find_python X.Y: an interpreter of that version, from pyenv first (its shims
# only run the active version), else from PATH.
find_python() {
  local want="$1" version path
  if command -v pyenv >/dev/null 2>&1; then
    for version in $(pyenv versions --bare 2>/dev/null | grep -E "^${want//./\\.}(\\.|$)" | sort -rV); do
      path="$(PYENV_VERSION="$version" pyenv which "python$want" 2>/dev/null)" || continue
      [ -x "$path" ] && { echo "$path"; return 0; }
    done
  fi
  path="$(command -v "python$want" 2>/dev/null)" || return 1
  "$path" -c 'import sys' >/dev/null 2>&1 && echo "$path"
}

# make_venv DIR PYTHON_VERSION OVERRIDE_VAR REQUIREMENTS [NO_DEPS_REQUIREMENTS]
make_venv() {
  local dir="$1" version="$2" override="$3" requirements="$4" no_deps="${5:-}"
  local stamp="$dir/.requirements.sha256" want py log
  want="$(cat "$requirements" ${no_deps:+"$no_deps"} | sha256sum | cut -d' ' -f1)"
  if [ -x "$dir/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  py="${!override:-}"
  [ -n "$py" ] || py="$(find_python "$version")" \
    || die "Python $version not found (install it, e.g. with pyenv, or set $override)"
  echo "setup: creating $dir (Python $version) from $requirements${no_deps:+ and $no_deps}" >&2
  [ -x "$dir/bin/python" ] || "$py" -m venv "$dir"
  log="$(mktemp)"
  if ! "$dir/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements" \
      >"$log" 2>&1; then
    grep -v '^WARNING: Location' "$log" >&2 || true
    die "pip install -r $requirements failed (into $dir)"
  fi
  if [ -n "$no_deps" ] && ! "$dir/bin/python" -m pip install -q --disable-pip-version-check \
      --no-deps -r "$no_deps" >"$log" 2>&1; then
    grep -v '^WARNING: Location' "$log" >&2 || true
    die "pip install --no-deps -r $no_deps failed (into $dir)"
  fi
  rm -f "$log"
  echo "$want" > "$stamp"
  made_venv=1
}

made_venv=""

# TF 2.15 supports Python 3.9-3.11 only: never a bare python3 that could be newer.
make_venv .venv 3.11 PYTHON_FOR_VENV requirements.txt
make_venv .venv-py313 3.13 PYTHON313_FOR_VENV requirements-py313.txt requirements-py313-no-deps.txt
make_venv .venv-tffree 3.13 PYTHON313_FOR_VENV requirements-tffree.txt

# `--peers`: also the venv of tools/benchmarks/peers.py (ONNX Runtime, OpenVINO,
# tf2onnx beside requirements.txt), for that benchmark only.
if [ -n "$peers" ]; then
  peers_requirements="$(mktemp --suffix=-requirements.txt-and-requirements-peers.txt)"
  trap 'rm -f "$peers_requirements"' EXIT
  cat requirements.txt tools/benchmarks/requirements-peers.txt > "$peers_requirements"
  make_venv .venv-peers 3.11 PYTHON_FOR_VENV "$peers_requirements"
fi

# A Bazel server that ran before a venv existed (e.g. `bazel query //...` on a
# fresh checkout) keeps that Python slot as missing until it restarts, which
# re-runs the interpreter rules (tools/bazel/python_configure.bzl). Stopping no
# server is instant.
if [ -n "$made_venv" ]; then
  bazel shutdown >/dev/null 2>&1 || true
fi
