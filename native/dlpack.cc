#include "native/dlpack.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>

namespace policy_runtime {
namespace {

constexpr int32_t kDLCPU = 1;
constexpr uint8_t kDLInt = 0, kDLUInt = 1, kDLFloat = 2, kDLComplex = 5;
constexpr const char* kDlTensorName = "dltensor";

std::atomic<int64_t> g_live_leaves{0};

void DestroyUnconsumedCapsule(PyObject* capsule) {
  // TF renames consumed capsules and takes over the deleter.
  if (!PyCapsule_IsValid(capsule, kDlTensorName)) return;
  auto* managed =
      static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule, kDlTensorName));
  if (managed != nullptr && managed->deleter != nullptr) managed->deleter(managed);
}

}  // namespace

void DeleteExportedLeaf(DLManagedTensor* managed) {
  g_live_leaves.fetch_sub(1, std::memory_order_relaxed);
  auto* leaf = reinterpret_cast<ExportedLeaf*>(managed);
  if (leaf->array != nullptr && Py_IsInitialized()) {
    // TF may release the buffer from one of its own threads.
    PyGILState_STATE state = PyGILState_Ensure();
    Py_DECREF(leaf->array);
    PyGILState_Release(state);
  }
  std::free(leaf->buffer);
  delete leaf;
}

LeafPtr NewExportedLeaf() {
  auto* leaf = new ExportedLeaf();  // value-initialized: all null
  g_live_leaves.fetch_add(1, std::memory_order_relaxed);
  return LeafPtr(leaf);
}

int64_t LiveExportedLeaves() { return g_live_leaves.load(); }

bool DlpackType(int type_num, int itemsize, DLDataType* out) {
  uint8_t code;
  switch (type_num) {
    case NPY_BYTE: case NPY_SHORT: case NPY_INT: case NPY_LONG: case NPY_LONGLONG:
      code = kDLInt; break;
    case NPY_UBYTE: case NPY_USHORT: case NPY_UINT: case NPY_ULONG: case NPY_ULONGLONG:
      code = kDLUInt; break;
    case NPY_HALF: case NPY_FLOAT: case NPY_DOUBLE:
      code = kDLFloat; break;
    case NPY_CFLOAT: case NPY_CDOUBLE:
      code = kDLComplex; break;
    default:
      return false;
  }
  *out = DLDataType{code, static_cast<uint8_t>(itemsize * 8), 1};
  return true;
}

void* AlignedAlloc(npy_intp nbytes) {
  size_t size = (static_cast<size_t>(nbytes) + kAlignment - 1) / kAlignment * kAlignment;
  void* buffer = std::aligned_alloc(kAlignment, size == 0 ? kAlignment : size);
  if (buffer == nullptr) throw std::bad_alloc();
  return buffer;
}

py::object Capsule(LeafPtr leaf, void* data, DLDataType type, const int64_t* shape, int ndim) {
  std::memcpy(leaf->shape, shape, sizeof(int64_t) * ndim);
  DLTensor& t = leaf->managed.dl_tensor;
  t.data = data;
  t.device = DLDevice{kDLCPU, 0};
  t.ndim = ndim;
  t.dtype = type;
  t.shape = leaf->shape;
  t.strides = nullptr;
  t.byte_offset = 0;
  leaf->managed.deleter = DeleteExportedLeaf;
  PyObject* capsule = PyCapsule_New(&leaf->managed, kDlTensorName, DestroyUnconsumedCapsule);
  if (capsule == nullptr) throw py::error_already_set();
  leaf.release();  // The capsule, then its consumer, owns it now.
  return Steal(capsule);
}

std::unique_ptr<Staging> StagingPool::Take(npy_intp batch, int num_args) {
  for (size_t i = free_.size(); i-- > 0;) {
    if (free_[i]->batch == batch) {
      std::unique_ptr<Staging> staging = std::move(free_[i]);
      free_.erase(free_.begin() + i);
      return staging;
    }
  }
  auto staging = std::make_unique<Staging>();
  staging->batch = batch;
  staging->leaves.resize(num_args);
  return staging;
}

void StagingPool::Return(std::unique_ptr<Staging> staging) {
  if (!staging) return;
  free_.push_back(std::move(staging));
  if (free_.size() <= kMaxPooled) return;
  // Destroy the evicted set only once the pool is consistent again: freeing
  // its tensors releases the GIL, letting other calls use the pool.
  std::unique_ptr<Staging> evicted = std::move(free_.front());
  free_.erase(free_.begin());
}

}  // namespace policy_runtime
