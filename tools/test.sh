#!/usr/bin/env bash
# Sets up (tools/setup.sh), runs every test on both stacks with one
# `bazel test //...` (targets ending in _py313 run on Python 3.13, those
# ending in _tffree in the environment without TensorFlow), prints each
# one's pytest counts, and ends with one line `N passed, M failed` summed
# over all.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash tools/setup.sh || exit 1
python3 tools/check_build_srcs.py || exit 1
output="$(mktemp)"
trap 'rm -f "$output"' EXIT
bazel test //... "$@" 2>&1 | tee "$output"
status=${PIPESTATUS[0]}
testlogs="$(bazel info bazel-testlogs 2>/dev/null)"
# The test targets this run reported, e.g. "//tests:marshal_test   (cached) PASSED in 4.1s",
# each with pytest's closing line from its log, e.g. "== 3 failed, 25 passed in 9.1s ==".
counts="$(
  grep -oE '^//[^ ]+' <(grep -E '^//[^ ]+ +(\(cached\) )?(PASSED|FAILED|TIMEOUT|FLAKY|NO STATUS|INCOMPLETE)' "$output") |
  while IFS= read -r target; do
    log="$testlogs/$(sed -E 's#^//##; s#:#/#' <<<"$target")/test.log"
    line="$(grep -E '[0-9]+ (passed|failed|error)' "$log" 2>/dev/null | tail -n 1)"
    [ -n "$line" ] || line="1 failed"   # no log, or crashed before pytest reported
    stack=py311
    [[ "$target" == *_py313 ]] && stack=py313
    [[ "$target" == *_tffree ]] && stack=tffree
    echo "$stack $line"
  done | awk '{ for (i = 2; i < NF; i++) {
                  if ($(i+1) ~ /^passed/) p[$1] += $i
                  if ($(i+1) ~ /^(failed|error)/) f[$1] += $i } }
              END { for (s in p) print s, p[s] + 0, f[s] + 0
                    for (s in f) if (!(s in p)) print s, 0, f[s] + 0 }' | sort)"
passed=0
failed=0
while read -r stack p f; do
  [ -n "$stack" ] || continue
  echo "$stack: $p passed, $f failed"
  passed=$((passed + p))
  failed=$((failed + f))
done <<<"$counts"
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
echo "$passed passed, $failed failed"
exit "$status"
