#!/usr/bin/env bash
# Sets up (tools/setup.sh), runs every test with `bazel test //...`, and ends
# with one line `N passed, M failed` summed over the pytest runs.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash tools/setup.sh || exit 1
output="$(mktemp)"
trap 'rm -f "$output"' EXIT
bazel test //... "$@" 2>&1 | tee "$output"
status=${PIPESTATUS[0]}
testlogs="$(bazel info bazel-testlogs 2>/dev/null)"
# The test targets this run reported, e.g. "//tests:marshal_test   (cached) PASSED in 4.1s".
read -r passed failed < <(
  grep -oE '^//[^ ]+' <(grep -E '^//[^ ]+ +(\(cached\) )?(PASSED|FAILED|TIMEOUT|FLAKY|NO STATUS|INCOMPLETE)' "$output") |
  while IFS= read -r target; do
    log="$testlogs/$(sed -E 's#^//##; s#:#/#' <<<"$target")/test.log"
    # pytest's closing line, e.g. "== 3 failed, 25 passed, 2 warnings in 9.1s =="
    line="$(grep -E '[0-9]+ (passed|failed|error)' "$log" 2>/dev/null | tail -n 1)"
    [ -n "$line" ] || line="1 failed"   # no log, or crashed before pytest reported
    echo "$line"
  done | awk '{ for (i = 1; i < NF; i++) {
                  if ($(i+1) ~ /^passed/) p += $i
                  if ($(i+1) ~ /^(failed|error)/) f += $i } }
              END { print p + 0, f + 0 }')
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
echo "$passed passed, $failed failed"
exit "$status"
