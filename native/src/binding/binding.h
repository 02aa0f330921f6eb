// Shared helpers of the thin N-API layer: argument readers that validate JS values and name what is wrong,
// and the guard that turns C++ exceptions into JS Errors.
#pragma once
#include <napi.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tensor.h"

namespace webgrpo::binding {

struct AddonData {
  Napi::FunctionReference tensorConstructor;
  Napi::FunctionReference modelConstructor;
};

// Runs fn; a C++ exception becomes a JS Error "<where>: <message>" (unless the message already names the method).
Napi::Value guard(Napi::Env env, const std::string& where, const std::function<Napi::Value()>& fn);
std::string withContext(const std::string& where, const std::string& message);
std::string describeException(std::exception_ptr error);

Napi::Object requireObject(Napi::Value value, const std::string& what);
double requireNumber(Napi::Value value, const std::string& what);
int64_t requireInteger(Napi::Value value, const std::string& what, int64_t min, int64_t max);
bool requireBoolean(Napi::Value value, const std::string& what);
std::string requireString(Napi::Value value, const std::string& what);
std::vector<int32_t> requireInt32Array(Napi::Value value, const std::string& what);
std::vector<uint8_t> requireUint8Array(Napi::Value value, const std::string& what);
std::vector<float> requireFloat32Array(Napi::Value value, const std::string& what);
std::vector<int64_t> requireShape(Napi::Value value, const std::string& what);

Napi::Value makeInt32Array(Napi::Env env, const std::vector<int32_t>& values);
Napi::Value makeFloat32Array(Napi::Env env, const std::vector<float>& values);

// NativeTensor handles.
void initTensorClass(Napi::Env env, AddonData& data);
Napi::Object wrapTensor(Napi::Env env, Tensor tensor);
// The tensor behind a NativeTensor handle; throws if value is not one or it was disposed.
const Tensor& unwrapTensor(Napi::Env env, Napi::Value value, const std::string& what);

// NativeModel handles.
void initModelClass(Napi::Env env, AddonData& data);
Napi::Value createModel(const Napi::CallbackInfo& info);

}  // namespace webgrpo::binding
