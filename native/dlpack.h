// DLPack export of input leaves (the v0.x ABI, as TensorFlow consumes it) and
// the pool of reused staging buffers that small leaves are copied into.
//
// Nothing here calls TensorFlow: a capsule is made here and handed to TF's
// `from_dlpack` by the TF feed (native/tf_feed.h).
#ifndef POLICY_RUNTIME_NATIVE_DLPACK_H_
#define POLICY_RUNTIME_NATIVE_DLPACK_H_

#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "native/common.h"

namespace policy_runtime {

struct DLDevice {
  int32_t device_type;
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};

// One allocation per exported leaf: the DLPack struct, its shape, and either
// an owned numpy array (zero-copy) or an owned aligned buffer (copy).
struct ExportedLeaf {
  DLManagedTensor managed;
  int64_t shape[NPY_MAXDIMS + 1];
  PyObject* array;  // Strong reference, or nullptr.
  void* buffer;     // From AlignedAlloc, or nullptr.
};

void DeleteExportedLeaf(DLManagedTensor* managed);
struct LeafDeleter {
  void operator()(ExportedLeaf* leaf) const { DeleteExportedLeaf(&leaf->managed); }
};
using LeafPtr = std::unique_ptr<ExportedLeaf, LeafDeleter>;

LeafPtr NewExportedLeaf();
// Leaves handed out and not yet released (for leak tests).
int64_t LiveExportedLeaves();

// The DLPack type of a numpy type; false for types TF converts itself
// (bool, strings, objects).
bool DlpackType(int type_num, int itemsize, DLDataType* out);

// A 64-byte aligned buffer of at least `nbytes` (std::bad_alloc if none).
void* AlignedAlloc(npy_intp nbytes);

// A "dltensor" capsule over `data`, which `leaf` keeps alive; the capsule owns
// the leaf until a consumer takes it over.
py::object Capsule(LeafPtr leaf, void* data, DLDataType type, const int64_t* shape, int ndim);

// Reused input tensors for one batch size: one per stageable argument slot,
// each aliasing an aligned buffer that calls copy their leaf into.
struct StagedLeaf {
  void* data = nullptr;
  py::object tensor;
};
struct Staging {
  npy_intp batch = 0;
  std::vector<StagedLeaf> leaves;  // by argument slot
};

// Free stagings by batch size, most recent last; guarded by the GIL.
class StagingPool {
 public:
  static constexpr size_t kMaxPooled = 16;

  std::unique_ptr<Staging> Take(npy_intp batch, int num_args);
  void Return(std::unique_ptr<Staging> staging);

 private:
  std::vector<std::unique_ptr<Staging>> free_;
};

}  // namespace policy_runtime

#endif  // POLICY_RUNTIME_NATIVE_DLPACK_H_
