// The few functions of LiteRT's public C API (the CompiledModel runtime in
// ai-edge-litert's libLiteRt.so) that native/litert_engine.cc calls, resolved
// at run time with dlopen/dlsym. The types are declared here from LiteRT's
// public litert/c headers (litert_common.h, litert_layout.h,
// litert_model_types.h, litert_environment_options.h); no LiteRT header is
// needed to build. The Python side loads only library versions it was
// checked against (policies/runtime/litert_library.py). tools/benchmarks/litert_probe.cc
// uses them too.
#ifndef POLICY_RUNTIME_NATIVE_LITERT_API_H_
#define POLICY_RUNTIME_NATIVE_LITERT_API_H_

#include <cstddef>
#include <cstdint>
#include <string>

extern "C" {
typedef int LiteRtStatus;  // kLiteRtStatusOk = 0
typedef struct LiteRtEnvironmentT* LiteRtEnvironment;
typedef struct LiteRtModelT* LiteRtModel;
typedef struct LiteRtOptionsT* LiteRtOptions;
typedef struct LiteRtOpaqueOptionsT* LiteRtOpaqueOptions;
typedef struct LiteRtCompiledModelT* LiteRtCompiledModel;
typedef struct LiteRtSignatureT* LiteRtSignature;
typedef struct LiteRtTensorT* LiteRtTensor;
typedef struct LiteRtTensorBufferT* LiteRtTensorBuffer;
typedef size_t LiteRtParamIndex;
typedef struct {
  unsigned int rank : 7;
  unsigned int has_strides : 1;
  int32_t dimensions[8];
  uint32_t strides[8];
} LiteRtLayout;
typedef struct {
  int element_type;  // LiteRtElementType: TfLiteType's values
  LiteRtLayout layout;
} LiteRtRankedTensorType;
typedef struct {
  int type;  // kLiteRtAnyTypeBool = 1, kLiteRtAnyTypeInt = 2
  union {
    bool bool_value;
    int64_t int_value;
    const void* ptr_value;
  };
} LiteRtAny;
typedef struct {
  int tag;
  LiteRtAny value;
} LiteRtEnvOption;
}
static_assert(sizeof(LiteRtLayout) == 68, "LiteRtLayout as in litert_layout.h");
static_assert(sizeof(LiteRtRankedTensorType) == 72, "as in litert_model_types.h");

namespace policy_runtime {

constexpr int kLiteRtHwAcceleratorCpu = 1;

struct LiteRtApi {
  LiteRtStatus (*CreateEnvironment)(int, const LiteRtEnvOption*, LiteRtEnvironment*);
  void (*DestroyEnvironment)(LiteRtEnvironment);
  LiteRtStatus (*CreateModelFromBuffer)(LiteRtEnvironment, const void*, size_t, LiteRtModel*);
  void (*DestroyModel)(LiteRtModel);
  LiteRtStatus (*CreateOptions)(LiteRtOptions*);
  void (*DestroyOptions)(LiteRtOptions);
  LiteRtStatus (*SetOptionsHardwareAccelerators)(LiteRtOptions, int);
  // Accelerator options (litert_opaque_options.h): `options` takes ownership of
  // an opaque options object added to it. The CPU accelerator's are identified
  // by "xnnpack", their payload a TOML string ("num_threads = 2\n").
  LiteRtStatus (*CreateOpaqueOptions)(const char*, void*, void (*)(void*), LiteRtOpaqueOptions*);
  void (*DestroyOpaqueOptions)(LiteRtOpaqueOptions);
  LiteRtStatus (*AddOpaqueOptions)(LiteRtOptions, LiteRtOpaqueOptions);
  LiteRtStatus (*CreateCompiledModel)(LiteRtEnvironment, LiteRtModel, LiteRtOptions,
                                      LiteRtCompiledModel*);
  void (*DestroyCompiledModel)(LiteRtCompiledModel);
  LiteRtStatus (*GetNumModelSignatures)(LiteRtModel, LiteRtParamIndex*);
  LiteRtStatus (*GetModelSignature)(LiteRtModel, LiteRtParamIndex, LiteRtSignature*);
  LiteRtStatus (*GetSignatureKey)(LiteRtSignature, const char**);
  LiteRtStatus (*GetNumSignatureInputs)(LiteRtSignature, LiteRtParamIndex*);
  LiteRtStatus (*GetNumSignatureOutputs)(LiteRtSignature, LiteRtParamIndex*);
  LiteRtStatus (*GetSignatureInputName)(LiteRtSignature, LiteRtParamIndex, const char**);
  LiteRtStatus (*GetSignatureOutputName)(LiteRtSignature, LiteRtParamIndex, const char**);
  LiteRtStatus (*GetSignatureInputTensorByIndex)(LiteRtSignature, LiteRtParamIndex, LiteRtTensor*);
  LiteRtStatus (*GetSignatureOutputTensorByIndex)(LiteRtSignature, LiteRtParamIndex,
                                                  LiteRtTensor*);
  LiteRtStatus (*GetRankedTensorType)(LiteRtTensor, LiteRtRankedTensorType*);
  LiteRtStatus (*CreateTensorBufferFromHostMemory)(const LiteRtRankedTensorType*, void*, size_t,
                                                   void*, LiteRtTensorBuffer*);
  void (*DestroyTensorBuffer)(LiteRtTensorBuffer);
  LiteRtStatus (*RunCompiledModel)(LiteRtCompiledModel, LiteRtParamIndex, size_t,
                                   LiteRtTensorBuffer*, size_t, LiteRtTensorBuffer*);
};

// The API of the library at `path`, every symbol resolved. The library stays
// loaded for the life of the process; a path loads once. Throws
// std::runtime_error naming the path and what failed (dlopen's error or the
// first missing symbol).
const LiteRtApi& LoadLiteRtApi(const std::string& path);

// Creates an environment that logs errors only and registers no accelerator
// plugins (no GPU/NPU/OpenVINO probing, and none of its warnings).
LiteRtStatus CreateQuietEnvironment(const LiteRtApi& api, LiteRtEnvironment* environment);

// Adds CPU accelerator options running XNNPACK on `num_threads` threads (its
// thread pool has num_threads - 1 workers); `options` owns them on success.
LiteRtStatus AddCpuThreads(const LiteRtApi& api, LiteRtOptions options, int num_threads);

}  // namespace policy_runtime

#endif  // POLICY_RUNTIME_NATIVE_LITERT_API_H_
