#!/usr/bin/env bash
# Sets up (tools/setup.sh), then runs every test:
#   * `bazel test //...` on both stacks (targets ending in _py313 run on
#     Python 3.13, those ending in _tffree in the environment without
#     TensorFlow);
#   * the consumer workspace (tests/consumer): a monorepo that takes this
#     project as an external repository with the README's snippet;
#   * the wheel smoke tests (tools/packaging/wheel_smoke.sh): wheels built,
#     installed into fresh venvs with and without TensorFlow, run from
#     outside the checkout.
# Prints each group's pytest counts and ends with one line `N passed, M failed`
# summed over all. Arguments go to the first `bazel test`.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash tools/setup.sh || exit 1
python3 tools/checks/check_build_srcs.py || exit 1
output="$(mktemp)"
trap 'rm -f "$output" "$output".*' EXIT

# pytest_counts OUTPUT TESTLOGS: "group passed failed" per test target a
# `bazel test` OUTPUT reported, e.g. "//tests:marshal_test (cached) PASSED in
# 4.1s", read from pytest's closing line in its log ("== 3 failed, 25 passed ==").
pytest_counts() {
  grep -oE '^//[^ ]+' <(grep -E '^//[^ ]+ +(\(cached\) )?(PASSED|FAILED|TIMEOUT|FLAKY|NO STATUS|INCOMPLETE)' "$1") |
  while IFS= read -r target; do
    log="$2/$(sed -E 's#^//##; s#:#/#' <<<"$target")/test.log"
    line="$(grep -E '[0-9]+ (passed|failed|error)' "$log" 2>/dev/null | tail -n 1)"
    [ -n "$line" ] || line="1 failed"   # no log, or crashed before pytest reported
    group="${3:-py311}"
    [[ "$target" == *_py313 ]] && group=py313
    [[ "$target" == *_tffree ]] && group=tffree
    echo "$group $line"
  done
}

status=0
bazel test //... "$@" 2>&1 | tee "$output"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
pytest_counts "$output" "$(bazel info bazel-testlogs 2>/dev/null)" > "$output.counts"

# The consumer workspace, with this checkout's primary venv as its interpreter.
(
  cd tests/consumer &&
  PYTHON_BIN_PATH="$root/.venv/bin/python" bazel test //... 2>&1 | tee "$output.consumer"
  rc=${PIPESTATUS[0]}
  pytest_counts "$output.consumer" "$(bazel info bazel-testlogs 2>/dev/null)" consumer \
    >> "$output.counts"
  bazel shutdown 2>/dev/null
  exit "$rc"
) || status=1

# The wheels, from outside the checkout.
bash tools/packaging/wheel_smoke.sh 2>&1 | tee "$output.wheel"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
grep -E '^[0-9]+ (passed|failed)|^=+ .*[0-9]+ (passed|failed)' "$output.wheel" |
  sed 's/^/wheel /' >> "$output.counts"

counts="$(awk '{ for (i = 2; i < NF; i++) {
                  if ($(i+1) ~ /^passed/) p[$1] += $i
                  if ($(i+1) ~ /^(failed|error)/) f[$1] += $i } }
              END { for (s in p) print s, p[s] + 0, f[s] + 0
                    for (s in f) if (!(s in p)) print s, 0, f[s] + 0 }' "$output.counts" | sort)"
passed=0
failed=0
while read -r group p f; do
  [ -n "$group" ] || continue
  echo "$group: $p passed, $f failed"
  passed=$((passed + p))
  failed=$((failed + f))
done <<<"$counts"
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
echo "$passed passed, $failed failed"
exit "$status"
