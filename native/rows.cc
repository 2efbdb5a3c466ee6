#include "native/rows.h"

#include <cstring>

#include "native/pack.h"

namespace policy_runtime {

std::vector<PyObject*> RowLists(const Layout& layout, const py::list& rows) {
  if (rows.size() == 0) throw py::value_error("call_rows: no rows");
  std::vector<PyObject*> row_lists(rows.size());
  for (size_t r = 0; r < rows.size(); ++r) {
    row_lists[r] = rows[r].ptr();
    if (!PyList_Check(row_lists[r]) || PyList_GET_SIZE(row_lists[r]) != layout.num_args)
      throw py::value_error("call_rows: every row must come from validate()");
    for (int slot = 0; slot < layout.num_args; ++slot) {
      PyObject* leaf = PyList_GET_ITEM(row_lists[r], slot);
      if (!PyArray_Check(leaf) ||
          !PyArray_CanCastTypeTo(PyArray_DESCR(reinterpret_cast<PyArrayObject*>(leaf)),
                                 layout.Slot(slot).Descr(), NPY_EQUIV_CASTING))
        throw py::value_error("call_rows: every row must come from validate()");
    }
  }
  return row_lists;
}

std::vector<npy_intp> RowDims(const Layout& layout, int slot, const std::vector<PyObject*>& rows,
                              npy_intp batch) {
  const LeafSpec& spec = layout.Slot(slot);
  int skip = spec.batch == kNoCallerBatch ? 0 : 1;  // state rows carry a batch of 1
  auto* first = reinterpret_cast<PyArrayObject*>(PyList_GET_ITEM(rows[0], slot));
  int inner_ndim = PyArray_NDIM(first) - skip;
  if (inner_ndim != static_cast<int>(spec.dims.size()))
    throw py::value_error("call_rows: every row must come from validate()");
  std::vector<npy_intp> dims(1 + inner_ndim);
  dims[0] = batch;
  for (int i = 0; i < inner_ndim; ++i) {
    dims[i + 1] = PyArray_DIM(first, i + skip);
    if (spec.dims[i] >= 0 && spec.dims[i] != dims[i + 1])
      throw py::value_error("call_rows: every row must come from validate()");
  }
  for (PyObject* row : rows) {
    auto* a = reinterpret_cast<PyArrayObject*>(PyList_GET_ITEM(row, slot));
    bool same = PyArray_NDIM(a) == inner_ndim + skip;
    for (int i = 0; same && i < inner_ndim; ++i) same = PyArray_DIM(a, i + skip) == dims[i + 1];
    if (!same) throw py::value_error("call_rows: rows of one leaf differ in shape");
  }
  return dims;
}

void CopyRows(const Layout& layout, int slot, const std::vector<PyObject*>& rows,
              PyArrayObject* out, const std::vector<npy_intp>& dims) {
  PyArray_Descr* want = layout.Slot(slot).Descr();
  int inner_ndim = static_cast<int>(dims.size()) - 1;
  char* base = static_cast<char*>(PyArray_DATA(out));
  npy_intp stride = PyDataType_ELSIZE(want);
  for (int i = 0; i < inner_ndim; ++i) stride *= dims[i + 1];
  std::vector<npy_intp> strides(inner_ndim);
  for (int i = inner_ndim; i-- > 0;)
    strides[i] = i + 1 == inner_ndim ? PyDataType_ELSIZE(want) : strides[i + 1] * dims[i + 2];
  for (size_t r = 0; r < rows.size(); ++r) {
    auto* a = reinterpret_cast<PyArrayObject*>(PyList_GET_ITEM(rows[r], slot));
    if (!PyDataType_REFCHK(want) && PyArray_IS_C_CONTIGUOUS(a) && PyArray_ISNOTSWAPPED(a) &&
        PyArray_EquivTypes(PyArray_DESCR(a), want) && PyArray_NBYTES(a) == stride) {
      std::memcpy(base + r * stride, PyArray_DATA(a), static_cast<size_t>(stride));
      continue;
    }
    Py_INCREF(want);
    py::object dst = Steal(PyArray_NewFromDescr(&PyArray_Type, want, inner_ndim, dims.data() + 1,
                                                strides.data(), base + r * stride,
                                                NPY_ARRAY_CARRAY, nullptr));
    Py_INCREF(out);
    if (PyArray_SetBaseObject(reinterpret_cast<PyArrayObject*>(dst.ptr()),
                              reinterpret_cast<PyObject*>(out)) < 0)
      throw py::error_already_set();
    PyArray_Dims shape{const_cast<npy_intp*>(dims.data()) + 1, inner_ndim};
    py::object src = Steal(PyArray_Newshape(a, &shape, NPY_ANYORDER));
    if (PyArray_CopyInto(reinterpret_cast<PyArrayObject*>(dst.ptr()),
                         reinterpret_cast<PyArrayObject*>(src.ptr())) < 0)
      throw py::error_already_set();
  }
}

py::object PackRow(const Layout& layout, const py::list& outputs, npy_intp row) {
  if (PyList_GET_SIZE(outputs.ptr()) < layout.min_outputs)
    throw py::value_error("pack_row: outputs must come from call_rows()");
  for (auto item : outputs) {
    if (!PyArray_Check(item.ptr()))
      throw py::type_error("pack_row: outputs must come from call_rows()");
    auto* arr = reinterpret_cast<PyArrayObject*>(item.ptr());
    if (PyArray_NDIM(arr) < 1 || row < 0 || row >= PyArray_DIM(arr, 0))
      throw py::value_error("pack_row: row out of range");
  }
  return PackTree(layout.output, [&](const OutNode& leaf) {
    // Row `row` with a batch of 1, then (unbatch) without it, as the caller's copy.
    auto* arr = reinterpret_cast<PyArrayObject*>(PyList_GET_ITEM(outputs.ptr(), leaf.index));
    std::vector<npy_intp> dims(PyArray_DIMS(arr), PyArray_DIMS(arr) + PyArray_NDIM(arr));
    dims[0] = 1;
    PyArray_Descr* descr = PyArray_DESCR(arr);
    Py_INCREF(descr);
    py::object view = Steal(PyArray_NewFromDescr(
        &PyArray_Type, descr, PyArray_NDIM(arr), dims.data(), PyArray_STRIDES(arr),
        static_cast<char*>(PyArray_DATA(arr)) + row * PyArray_STRIDE(arr, 0),
        PyArray_FLAGS(arr) & ~NPY_ARRAY_OWNDATA, nullptr));
    Py_INCREF(arr);
    if (PyArray_SetBaseObject(reinterpret_cast<PyArrayObject*>(view.ptr()),
                              reinterpret_cast<PyObject*>(arr)) < 0)
      throw py::error_already_set();
    return OwnedCopy(view, leaf.unbatch);
  });
}

}  // namespace policy_runtime
