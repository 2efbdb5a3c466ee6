#!/usr/bin/env bash
# Runs every native entry point's tests against the extension built with
# AddressSanitizer and UndefinedBehaviorSanitizer, on each tested stack
# (.venv: Python 3.11, numpy 1.26; .venv-py313: Python 3.13, numpy 2):
#   the marshaler tests and N marshaler fuzz cases and N real action() call
#   sequences (flatten, call, and call_buffers on the native LiteRT engine),
#   the LiteRT backend tests and the native engine's (call_buffers on LiteRT's
#   C API and on the interpreter, runner pools, the fallback), the
#   batcher's tests, threads and coroutines, and N row-gather fuzz cases
#   (validate, call_rows, call_rows_buffers, pack_row), the compiled
#   policy's (plans without a TF runtime), the pushed-weights tests (the
#   switch's follow path), the input contract (Mappings that raise, array
#   protocols) and the precision tests (int8 models, num_threads runners).
#   bash tools/checks/sanitize.sh [N] [STACK...]     (N default 5000; stacks: py311 py313)
# Prints sanitizer reports, if any, and exits non-zero on a finding. Huge
# inputs make ASan report "failed to allocate" warnings; those are expected
# (the marshaler turns them into ValueErrors) and are filtered out.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bash "$root/tools/setup.sh"
examples="${1:-5000}"
shift || true
stacks=("$@")
[ ${#stacks[@]} -gt 0 ] || stacks=(py311 py313)
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# The library imports itself as policy_runtime.*: the copy is $tmp/policy_runtime.
work="$tmp/policy_runtime"
mkdir "$work"
cp -r "$root/policies" "$root/native" "$root/tools" "$root/tests" "$work/"
# pytest with Keras 2 selected for TF-Agents' networks, as tests/pytest_main.py does.
pytest_keras_2="import sys, pytest
from tools.fixtures import tf_agents_keras
tf_agents_keras.select_keras_2()
sys.exit(pytest.main(sys.argv[1:]))"
status=0
for stack in "${stacks[@]}"; do
  case "$stack" in
    py311) py="$root/.venv/bin/python" ;;
    py313) py="$root/.venv-py313/bin/python" ;;
    *) echo "tools/checks/sanitize.sh: unknown stack $stack (py311 or py313)" >&2; exit 2 ;;
  esac
  read -r py_inc pybind_inc numpy_inc suffix < <("$py" -c \
    "import sysconfig, pybind11, numpy; print(sysconfig.get_paths()['include'], pybind11.get_include(), numpy.get_include(), sysconfig.get_config_var('EXT_SUFFIX'))")
  echo "sanitize: $stack ($("$py" -V 2>&1))" >&2
  g++ -O1 -g -std=c++17 -fPIC -shared -fvisibility=hidden -fno-omit-frame-pointer \
    -fsanitize=address,undefined -I"$py_inc" -I"$pybind_inc" -I"$numpy_inc" \
    -I"$work" "$work"/native/*.cc -ldl -o "$work/native/_marshal$suffix"
  (cd "$work" &&
    LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)" \
    ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:allocator_may_return_null=1:log_path=$work/asan" \
    UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:log_path=$work/ubsan" \
    POLICY_RUNTIME_CONVERT_MEMORY_GB=0 \
    FUZZ_EXAMPLES="$examples" PYTHONPATH="$tmp:$work:$work/tests" TF_CPP_MIN_LOG_LEVEL=2 \
    "$py" -c "$pytest_keras_2" tests/marshal_test.py tests/marshal_fuzz_test.py tests/action_fuzz_test.py \
      tests/lite_backend_test.py tests/litert_native_test.py tests/lite_sampling_test.py \
      tests/dynamic_batching_test.py tests/async_batching_test.py \
      tests/rows_fuzz_test.py tests/compiled_test.py tests/pushed_weights_test.py \
      tests/input_contract_test.py tests/precision_test.py \
      -q -p no:cacheprovider \
      -W ignore::DeprecationWarning) || status=$?
done
findings="$(cat "$work"/asan* "$work"/ubsan* 2>/dev/null | grep -v 'failed to allocate' || true)"
if [ -n "$findings" ]; then
  echo "$findings"
  status=1
fi
echo "sanitizers (${stacks[*]}): $([ -z "$findings" ] && echo "no findings" || echo "FINDINGS above")"
exit "$status"
