#include "native/litert_api.h"

#include <dlfcn.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <new>
#include <memory>
#include <mutex>
#include <stdexcept>

namespace policy_runtime {
namespace {

class Resolver {
 public:
  Resolver(void* library, const std::string& path) : library_(library), path_(path) {}

  template <typename F>
  void operator()(const char* name, F* out) const {
    *out = reinterpret_cast<F>(dlsym(library_, name));
    if (*out == nullptr)
      throw std::runtime_error(path_ + " does not export " + name);
  }

 private:
  void* library_;
  const std::string& path_;
};

std::unique_ptr<LiteRtApi> Resolve(const std::string& path) {
  void* library = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (library == nullptr) {
    const char* error = dlerror();
    throw std::runtime_error(error != nullptr ? error : "cannot load " + path);
  }
  auto api = std::make_unique<LiteRtApi>();
  Resolver resolve(library, path);
  try {
    resolve("LiteRtCreateEnvironment", &api->CreateEnvironment);
    resolve("LiteRtDestroyEnvironment", &api->DestroyEnvironment);
    resolve("LiteRtCreateModelFromBuffer", &api->CreateModelFromBuffer);
    resolve("LiteRtDestroyModel", &api->DestroyModel);
    resolve("LiteRtCreateOptions", &api->CreateOptions);
    resolve("LiteRtDestroyOptions", &api->DestroyOptions);
    resolve("LiteRtSetOptionsHardwareAccelerators", &api->SetOptionsHardwareAccelerators);
    resolve("LiteRtCreateOpaqueOptions", &api->CreateOpaqueOptions);
    resolve("LiteRtDestroyOpaqueOptions", &api->DestroyOpaqueOptions);
    resolve("LiteRtAddOpaqueOptions", &api->AddOpaqueOptions);
    resolve("LiteRtCreateCompiledModel", &api->CreateCompiledModel);
    resolve("LiteRtDestroyCompiledModel", &api->DestroyCompiledModel);
    resolve("LiteRtGetNumModelSignatures", &api->GetNumModelSignatures);
    resolve("LiteRtGetModelSignature", &api->GetModelSignature);
    resolve("LiteRtGetSignatureKey", &api->GetSignatureKey);
    resolve("LiteRtGetNumSignatureInputs", &api->GetNumSignatureInputs);
    resolve("LiteRtGetNumSignatureOutputs", &api->GetNumSignatureOutputs);
    resolve("LiteRtGetSignatureInputName", &api->GetSignatureInputName);
    resolve("LiteRtGetSignatureOutputName", &api->GetSignatureOutputName);
    resolve("LiteRtGetSignatureInputTensorByIndex", &api->GetSignatureInputTensorByIndex);
    resolve("LiteRtGetSignatureOutputTensorByIndex", &api->GetSignatureOutputTensorByIndex);
    resolve("LiteRtGetRankedTensorType", &api->GetRankedTensorType);
    resolve("LiteRtCreateTensorBufferFromHostMemory", &api->CreateTensorBufferFromHostMemory);
    resolve("LiteRtDestroyTensorBuffer", &api->DestroyTensorBuffer);
    resolve("LiteRtRunCompiledModel", &api->RunCompiledModel);
  } catch (...) {
    dlclose(library);
    throw;
  }
  return api;
}

constexpr int kEnvOptionAutoRegisterAccelerators = 24;
constexpr int kEnvOptionMinLoggerSeverity = 25;
constexpr int kLogSeverityError = 3;
constexpr int kAnyTypeBool = 1;
constexpr int kAnyTypeInt = 2;

}  // namespace

LiteRtStatus CreateQuietEnvironment(const LiteRtApi& api, LiteRtEnvironment* environment) {
  LiteRtEnvOption options[2] = {};
  options[0].tag = kEnvOptionMinLoggerSeverity;
  options[0].value.type = kAnyTypeInt;
  options[0].value.int_value = kLogSeverityError;
  options[1].tag = kEnvOptionAutoRegisterAccelerators;
  options[1].value.type = kAnyTypeBool;
  options[1].value.bool_value = false;
  return api.CreateEnvironment(2, options, environment);
}

LiteRtStatus AddCpuThreads(const LiteRtApi& api, LiteRtOptions options, int num_threads) {
  std::string toml = "num_threads = " + std::to_string(num_threads) + "\n";
  char* payload = static_cast<char*>(std::malloc(toml.size() + 1));
  if (payload == nullptr) throw std::bad_alloc();
  std::memcpy(payload, toml.c_str(), toml.size() + 1);
  LiteRtOpaqueOptions cpu = nullptr;
  LiteRtStatus status = api.CreateOpaqueOptions("xnnpack", payload, std::free, &cpu);
  if (status != 0) {
    std::free(payload);
    return status;
  }
  status = api.AddOpaqueOptions(options, cpu);
  if (status != 0) api.DestroyOpaqueOptions(cpu);  // frees the payload
  return status;
}

const LiteRtApi& LoadLiteRtApi(const std::string& path) {
  static std::mutex mutex;
  static auto* loaded = new std::map<std::string, std::unique_ptr<LiteRtApi>>();
  std::lock_guard<std::mutex> lock(mutex);
  auto found = loaded->find(path);
  if (found != loaded->end()) return *found->second;
  return *loaded->emplace(path, Resolve(path)).first->second;
}

}  // namespace policy_runtime
