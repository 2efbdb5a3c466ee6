#!/usr/bin/env bash
# Runs the marshaler tests, N marshaler fuzz cases and N real action() call
# sequences (default 5000), the LiteRT backend tests, the batcher's tests
# (threads and coroutines: call_rows, call_rows_buffers, pack_row) and the
# compiled policy's (plans without a TF runtime), against the native module
# built with AddressSanitizer and UndefinedBehaviorSanitizer.
#   bash tools/sanitize.sh [N]
# Prints sanitizer reports, if any, and exits non-zero on a finding. Huge
# inputs make ASan report "failed to allocate" warnings; those are expected
# (the marshaler turns them into ValueErrors) and are filtered out.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/tools/setup.sh"
py="$root/.venv/bin/python"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r "$root/policies" "$root/native" "$root/tools" "$root/tests" "$work/"
read -r py_inc pybind_inc numpy_inc < <("$py" -c \
  "import sysconfig, pybind11, numpy; print(sysconfig.get_paths()['include'], pybind11.get_include(), numpy.get_include())")
g++ -O1 -g -std=c++17 -fPIC -shared -fvisibility=hidden -fno-omit-frame-pointer \
  -fsanitize=address,undefined -I"$py_inc" -I"$pybind_inc" -I"$numpy_inc" \
  -I"$work" "$work/native/marshal.cc" "$work/native/copy_switch.cc" -o "$work/native/_marshal.so"
status=0
(cd "$work" &&
  LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)" \
  ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:allocator_may_return_null=1:log_path=$work/asan" \
  UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$work/ubsan" \
  FUZZ_EXAMPLES="${1:-5000}" PYTHONPATH="$work:$work/tests" TF_CPP_MIN_LOG_LEVEL=2 \
  "$py" -m pytest tests/marshal_test.py tests/marshal_fuzz_test.py tests/action_fuzz_test.py \
    tests/lite_backend_test.py tests/dynamic_batching_test.py tests/async_batching_test.py \
    tests/compiled_test.py -q -p no:cacheprovider \
    -W ignore::DeprecationWarning) || status=$?
findings="$(cat "$work"/asan* "$work"/ubsan* 2>/dev/null | grep -v 'failed to allocate' || true)"
if [ -n "$findings" ]; then
  echo "$findings"
  status=1
fi
echo "sanitizers: $([ -z "$findings" ] && echo "no findings" || echo "FINDINGS above")"
exit "$status"
