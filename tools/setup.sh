#!/usr/bin/env bash
# Idempotent set-up: Bazel (Debian's bazel-bootstrap) and the project's .venv.
# Quiet when nothing is missing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

die() { echo "tools/setup.sh: $*" >&2; exit 1; }

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

py="${PYTHON_FOR_VENV:-python3.11}"
stamp=".venv/.requirements.sha256"
want="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  command -v "$py" >/dev/null 2>&1 || die "$py not found (TensorFlow 2.15 needs Python 3.9-3.11)"
  echo "setup: creating .venv from requirements.txt" >&2
  [ -x .venv/bin/python ] || "$py" -m venv .venv
  log="$(mktemp)"
  if ! .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt >"$log" 2>&1; then
    grep -v '^WARNING: Location' "$log" >&2 || true
    die "pip install -r requirements.txt failed"
  fi
  rm -f "$log"
  echo "$want" > "$stamp"
fi
