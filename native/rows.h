// Rows for the dynamic batcher: many callers' validated leaves (each from
// `Plan.validate`, for a plan whose time-step leaves come unbatched and whose
// state leaves carry a batch of 1) gathered into one batched input per
// argument slot, and one caller's row cut back out of the batched outputs.
#ifndef POLICY_RUNTIME_NATIVE_ROWS_H_
#define POLICY_RUNTIME_NATIVE_ROWS_H_

#include <pybind11/pybind11.h>

#include <vector>

#include "native/nest.h"

namespace policy_runtime {

// The callers' rows (lists of `layout.num_args` arrays), borrowed from `rows`.
std::vector<PyObject*> RowLists(const Layout& layout, const py::list& rows);

// The batched shape of one argument slot's rows: [batch, inner dims...].
std::vector<npy_intp> RowDims(const Layout& layout, int slot, const std::vector<PyObject*>& rows,
                              npy_intp batch);

// Copies caller r's leaf of `slot` into row r of `out` (C-contiguous, of
// shape `dims` and the slot's dtype). Rows past the callers' are untouched.
void CopyRows(const Layout& layout, int slot, const std::vector<PyObject*>& rows,
              PyArrayObject* out, const std::vector<npy_intp>& dims);

// Row `row` of batched outputs (from call_rows / call_rows_buffers), packed
// as a single call's outputs are.
py::object PackRow(const Layout& layout, const py::list& outputs, npy_intp row);

}  // namespace policy_runtime

#endif  // POLICY_RUNTIME_NATIVE_ROWS_H_
