// Module entry: the free functions of NativeAddon (src/native/addon.ts).
#include "binding/binding.h"
#include "engine.h"

namespace webgrpo::binding {
namespace {

Napi::Value backends(const Napi::CallbackInfo& info) {
  auto list = Napi::Array::New(info.Env());
  list.Set(uint32_t(0), "cpu");
  if (cudaAvailable()) list.Set(uint32_t(1), "cuda");
  return list;
}

Napi::Value backendFeatures(const Napi::CallbackInfo& info) {
  return guard(info.Env(), "backendFeatures", [&]() -> Napi::Value {
    webgrpo::BackendFeatures f = webgrpo::backendFeatures(parseDevice(requireString(info[0], "backendFeatures: backend")));
    auto out = Napi::Object::New(info.Env());
    out.Set("generate", f.generate);
    out.Set("lora", f.lora);
    return out;
  });
}

Napi::Value tensorFromBytes(const Napi::CallbackInfo& info) {
  return guard(info.Env(), "tensorFromBytes", [&]() -> Napi::Value {
    if (!info[0].IsTypedArray() && !info[0].IsBuffer())
      throw std::invalid_argument("tensorFromBytes: bytes must be a Uint8Array");
    auto bytes = info[0].As<Napi::Uint8Array>();
    if (bytes.TypedArrayType() != napi_uint8_array) throw std::invalid_argument("tensorFromBytes: bytes must be a Uint8Array");
    std::vector<int64_t> shape = requireShape(info[1], "tensorFromBytes: shape");
    DType dtype = parseDType(requireString(info[2], "tensorFromBytes: dtype"));
    Device device = parseDevice(requireString(info[3], "tensorFromBytes: device"));
    return wrapTensor(info.Env(), Tensor::fromBytes(bytes.Data(), bytes.ByteLength(), shape, dtype, device));
  });
}

Napi::Value tensorFromFloat32(const Napi::CallbackInfo& info) {
  return guard(info.Env(), "tensorFromFloat32", [&]() -> Napi::Value {
    if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
      throw std::invalid_argument("tensorFromFloat32: data must be a Float32Array");
    auto data = info[0].As<Napi::Float32Array>();
    std::vector<int64_t> shape = requireShape(info[1], "tensorFromFloat32: shape");
    DType dtype = parseDType(requireString(info[2], "tensorFromFloat32: dtype"));
    Device device = parseDevice(requireString(info[3], "tensorFromFloat32: device"));
    return wrapTensor(info.Env(), Tensor::fromFloat32(data.Data(), data.ElementLength(), shape, dtype, device));
  });
}

}  // namespace

Napi::Object init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  env.SetInstanceData<AddonData>(data);
  initTensorClass(env, *data);
  initModelClass(env, *data);
  exports.Set("backends", Napi::Function::New(env, backends, "backends"));
  exports.Set("backendFeatures", Napi::Function::New(env, backendFeatures, "backendFeatures"));
  exports.Set("tensorFromBytes", Napi::Function::New(env, tensorFromBytes, "tensorFromBytes"));
  exports.Set("tensorFromFloat32", Napi::Function::New(env, tensorFromFloat32, "tensorFromFloat32"));
  exports.Set("createModel", Napi::Function::New(env, createModel, "createModel"));
  return exports;
}

}  // namespace webgrpo::binding

static Napi::Object InitWebgrpo(Napi::Env env, Napi::Object exports) { return webgrpo::binding::init(env, exports); }

NODE_API_MODULE(webgrpo, InitWebgrpo)
