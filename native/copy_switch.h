// CopySwitch: which loaded copy of a policy calls run on, swapped atomically.
#ifndef POLICY_RUNTIME_NATIVE_COPY_SWITCH_H_
#define POLICY_RUNTIME_NATIVE_COPY_SWITCH_H_

#include <pybind11/pybind11.h>

namespace policy_runtime {

// Binds `CopySwitch` into the extension module.
void RegisterCopySwitch(pybind11::module_& m);

}  // namespace policy_runtime

#endif  // POLICY_RUNTIME_NATIVE_COPY_SWITCH_H_
