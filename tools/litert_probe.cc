// Probes LiteRT's public C API (the CompiledModel runtime in ai-edge-litert's
// libLiteRt.so) on a policy's converted `action`: loads the library at run
// time (dlopen/dlsym, no LiteRT headers: the few types used are declared
// here from LiteRT's public litert/c headers), compiles the model for the
// CPU, resizes its batch, binds host-memory buffers sized as the compiled
// model reports, and times a bare LiteRtRunCompiledModel: passing the input
// buffers on every run, and passing nulls after a first run bound them (what
// native/litert_engine.cc does).
//
//   litert_probe LIBLITERT_SO MODEL.tflite BATCH [CALLS]
//
// Prints one line of `key=value` pairs: status=ok with us_per_run and
// us_per_run_bound, or
// status=<step>_failed; reported_batch is the batch of the outputs as the
// compiled model reports them after the resize. Run by tools/litert_probe.py.
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

extern "C" {
typedef int LiteRtStatus;  // kLiteRtStatusOk = 0
typedef struct LiteRtEnvironmentT* LiteRtEnvironment;
typedef struct LiteRtModelT* LiteRtModel;
typedef struct LiteRtOptionsT* LiteRtOptions;
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
  int element_type;
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

namespace {

constexpr int kEnvOptionAutoRegisterAccelerators = 24;
constexpr int kEnvOptionMinLoggerSeverity = 25;
constexpr int kLogSeverityError = 3;
constexpr int kHwAcceleratorCpu = 1;
constexpr size_t kAlignment = 64;

struct Api {
  LiteRtStatus (*CreateEnvironment)(int, const LiteRtEnvOption*, LiteRtEnvironment*);
  LiteRtStatus (*CreateModelFromBuffer)(LiteRtEnvironment, const void*, size_t, LiteRtModel*);
  LiteRtStatus (*CreateOptions)(LiteRtOptions*);
  LiteRtStatus (*SetOptionsHardwareAccelerators)(LiteRtOptions, int);
  LiteRtStatus (*CreateCompiledModel)(LiteRtEnvironment, LiteRtModel, LiteRtOptions,
                                      LiteRtCompiledModel*);
  LiteRtStatus (*GetNumModelSignatures)(LiteRtModel, LiteRtParamIndex*);
  LiteRtStatus (*GetModelSignature)(LiteRtModel, LiteRtParamIndex, LiteRtSignature*);
  LiteRtStatus (*GetSignatureKey)(LiteRtSignature, const char**);
  LiteRtStatus (*GetNumSignatureInputs)(LiteRtSignature, LiteRtParamIndex*);
  LiteRtStatus (*GetNumSignatureOutputs)(LiteRtSignature, LiteRtParamIndex*);
  LiteRtStatus (*GetSignatureInputTensorByIndex)(LiteRtSignature, LiteRtParamIndex, LiteRtTensor*);
  LiteRtStatus (*GetSignatureOutputTensorByIndex)(LiteRtSignature, LiteRtParamIndex,
                                                  LiteRtTensor*);
  LiteRtStatus (*GetRankedTensorType)(LiteRtTensor, LiteRtRankedTensorType*);
  LiteRtStatus (*CompiledModelResizeInputTensor)(LiteRtCompiledModel, LiteRtParamIndex,
                                                 LiteRtParamIndex, const int*, size_t);
  LiteRtStatus (*GetCompiledModelOutputTensorLayouts)(LiteRtCompiledModel, LiteRtParamIndex,
                                                      size_t, LiteRtLayout*, bool);
  LiteRtStatus (*CreateTensorBufferFromHostMemory)(const LiteRtRankedTensorType*, void*, size_t,
                                                   void*, LiteRtTensorBuffer*);
  LiteRtStatus (*RunCompiledModel)(LiteRtCompiledModel, LiteRtParamIndex, size_t,
                                   LiteRtTensorBuffer*, size_t, LiteRtTensorBuffer*);
};

template <typename F>
bool Resolve(void* library, const char* name, F* out) {
  *out = reinterpret_cast<F>(dlsym(library, name));
  if (*out == nullptr) std::printf("status=missing_symbol symbol=%s\n", name);
  return *out != nullptr;
}

bool LoadApi(const char* path, Api* api) {
  void* library = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (library == nullptr) {
    std::printf("status=dlopen_failed error=\"%s\"\n", dlerror());
    return false;
  }
  return Resolve(library, "LiteRtCreateEnvironment", &api->CreateEnvironment) &&
         Resolve(library, "LiteRtCreateModelFromBuffer", &api->CreateModelFromBuffer) &&
         Resolve(library, "LiteRtCreateOptions", &api->CreateOptions) &&
         Resolve(library, "LiteRtSetOptionsHardwareAccelerators",
                 &api->SetOptionsHardwareAccelerators) &&
         Resolve(library, "LiteRtCreateCompiledModel", &api->CreateCompiledModel) &&
         Resolve(library, "LiteRtGetNumModelSignatures", &api->GetNumModelSignatures) &&
         Resolve(library, "LiteRtGetModelSignature", &api->GetModelSignature) &&
         Resolve(library, "LiteRtGetSignatureKey", &api->GetSignatureKey) &&
         Resolve(library, "LiteRtGetNumSignatureInputs", &api->GetNumSignatureInputs) &&
         Resolve(library, "LiteRtGetNumSignatureOutputs", &api->GetNumSignatureOutputs) &&
         Resolve(library, "LiteRtGetSignatureInputTensorByIndex",
                 &api->GetSignatureInputTensorByIndex) &&
         Resolve(library, "LiteRtGetSignatureOutputTensorByIndex",
                 &api->GetSignatureOutputTensorByIndex) &&
         Resolve(library, "LiteRtGetRankedTensorType", &api->GetRankedTensorType) &&
         Resolve(library, "LiteRtCompiledModelResizeInputTensor",
                 &api->CompiledModelResizeInputTensor) &&
         Resolve(library, "LiteRtGetCompiledModelOutputTensorLayouts",
                 &api->GetCompiledModelOutputTensorLayouts) &&
         Resolve(library, "LiteRtCreateTensorBufferFromHostMemory",
                 &api->CreateTensorBufferFromHostMemory) &&
         Resolve(library, "LiteRtRunCompiledModel", &api->RunCompiledModel);
}

size_t ElementBytes(int element_type) {
  switch (element_type) {
    case 4: case 11: case 13: return 8;         // int64, float64, uint64
    case 3: case 6: case 9: return 1;           // uint8, bool, int8
    case 7: case 10: case 17: case 19: return 2;  // int16, float16, uint16, bfloat16
    default: return 4;                          // float32, int32, uint32
  }
}

size_t Bytes(const LiteRtRankedTensorType& type) {
  size_t n = ElementBytes(type.element_type);
  for (unsigned i = 0; i < type.layout.rank; ++i)
    n *= static_cast<size_t>(std::max(type.layout.dimensions[i], 1));
  return n;
}

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

#define STEP(name, call)                                  \
  do {                                                    \
    if ((call) != 0) {                                    \
      std::printf("status=%s_failed\n", name);            \
      return 1;                                           \
    }                                                     \
  } while (0)

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s LIBLITERT_SO MODEL.tflite BATCH [CALLS]\n", argv[0]);
    return 2;
  }
  const int batch = std::atoi(argv[3]);
  const int calls = argc > 4 ? std::atoi(argv[4]) : 20000;
  Api api;
  if (!LoadApi(argv[1], &api)) return 1;
  std::ifstream file(argv[2], std::ios::binary);
  std::vector<char> flatbuffer((std::istreambuf_iterator<char>(file)), {});

  LiteRtEnvOption options[2] = {};
  options[0].tag = kEnvOptionMinLoggerSeverity;
  options[0].value.type = 2;
  options[0].value.int_value = kLogSeverityError;
  options[1].tag = kEnvOptionAutoRegisterAccelerators;
  options[1].value.type = 1;
  options[1].value.bool_value = false;
  LiteRtEnvironment environment;
  STEP("environment", api.CreateEnvironment(2, options, &environment));
  LiteRtModel model;
  STEP("model", api.CreateModelFromBuffer(environment, flatbuffer.data(), flatbuffer.size(),
                                          &model));
  LiteRtOptions compile_options;
  STEP("options", api.CreateOptions(&compile_options));
  STEP("options", api.SetOptionsHardwareAccelerators(compile_options, kHwAcceleratorCpu));
  LiteRtCompiledModel compiled;
  STEP("compile", api.CreateCompiledModel(environment, model, compile_options, &compiled));

  LiteRtParamIndex signatures, index = 0;
  LiteRtSignature signature = nullptr;
  STEP("signature", api.GetNumModelSignatures(model, &signatures));
  for (LiteRtParamIndex i = 0; i < signatures; ++i) {
    LiteRtSignature candidate;
    const char* key;
    STEP("signature", api.GetModelSignature(model, i, &candidate));
    STEP("signature", api.GetSignatureKey(candidate, &key));
    if (std::string(key) == "action") signature = candidate, index = i;
  }
  if (signature == nullptr) {
    std::printf("status=no_action_signature\n");
    return 1;
  }
  LiteRtParamIndex num_inputs, num_outputs;
  STEP("signature", api.GetNumSignatureInputs(signature, &num_inputs));
  STEP("signature", api.GetNumSignatureOutputs(signature, &num_outputs));

  std::vector<std::unique_ptr<void, FreeDeleter>> memory;
  auto host_buffer = [&](const LiteRtRankedTensorType& type, LiteRtTensorBuffer* out) {
    size_t size = (Bytes(type) + kAlignment - 1) / kAlignment * kAlignment;
    void* data = std::aligned_alloc(kAlignment, size);
    std::memset(data, 0, size);
    memory.emplace_back(data);
    return api.CreateTensorBufferFromHostMemory(&type, data, size, nullptr, out);
  };
  std::vector<LiteRtTensorBuffer> inputs(num_inputs), outputs(num_outputs);
  for (LiteRtParamIndex i = 0; i < num_inputs; ++i) {
    LiteRtTensor tensor;
    LiteRtRankedTensorType type;
    STEP("input_type", api.GetSignatureInputTensorByIndex(signature, i, &tensor));
    STEP("input_type", api.GetRankedTensorType(tensor, &type));
    if (type.layout.rank > 0 && type.layout.dimensions[0] < 0) {
      type.layout.dimensions[0] = batch;
      std::vector<int> dims(type.layout.dimensions, type.layout.dimensions + type.layout.rank);
      STEP("resize", api.CompiledModelResizeInputTensor(compiled, index, i, dims.data(),
                                                         dims.size()));
    }
    STEP("input_buffer", host_buffer(type, &inputs[i]));
  }
  std::vector<LiteRtLayout> layouts(num_outputs);
  STEP("output_layouts", api.GetCompiledModelOutputTensorLayouts(compiled, index, num_outputs,
                                                                 layouts.data(), true));
  int reported_batch = batch;  // an output's batch that differs, if any
  for (LiteRtParamIndex i = 0; i < num_outputs; ++i) {
    LiteRtTensor tensor;
    LiteRtRankedTensorType type;
    STEP("output_type", api.GetSignatureOutputTensorByIndex(signature, i, &tensor));
    STEP("output_type", api.GetRankedTensorType(tensor, &type));
    type.layout = layouts[i];
    if (type.layout.rank > 0 && type.layout.dimensions[0] != batch)
      reported_batch = type.layout.dimensions[0];
    STEP("output_buffer", host_buffer(type, &outputs[i]));
  }
  if (reported_batch != batch) {
    // Buffers of the reported size would be too small: the run would write past them.
    std::printf("status=outputs_not_resized reported_batch=%d batch=%d\n", reported_batch, batch);
    return 1;
  }
  STEP("run", api.RunCompiledModel(compiled, index, num_inputs, inputs.data(), num_outputs,
                                   outputs.data()));
  auto median_us = [&](LiteRtTensorBuffer* run_inputs) {
    std::vector<double> rounds;
    for (int round = 0; round < 7; ++round) {
      auto start = std::chrono::steady_clock::now();
      for (int k = 0; k < calls; ++k)
        api.RunCompiledModel(compiled, index, num_inputs, run_inputs, num_outputs,
                             outputs.data());
      rounds.push_back(std::chrono::duration<double, std::micro>(
                           std::chrono::steady_clock::now() - start).count() / calls);
    }
    std::sort(rounds.begin(), rounds.end());
    return rounds[3];
  };
  double every_run = median_us(inputs.data());
  std::vector<LiteRtTensorBuffer> bound(num_inputs, nullptr);  // keep the last run's bindings
  double after_binding = median_us(bound.data());
  std::printf("status=ok reported_batch=%d us_per_run=%.3f us_per_run_bound=%.3f\n",
              reported_batch, every_run, after_binding);
  return 0;
}
