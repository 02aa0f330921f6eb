#include <cmath>
#include <cstring>
#include <new>
#include <stdexcept>

#include "binding/binding.h"

namespace webgrpo::binding {

std::string withContext(const std::string& where, const std::string& message) {
  // Engine messages already name their method ("score: ...", "setParameter(x): ..."): keep those as they are.
  const std::string method = where.substr(0, where.find('('));
  if (message.compare(0, method.size(), method) == 0) return message;
  return where + ": " + message;
}

std::string describeException(std::exception_ptr error) {
  try {
    std::rethrow_exception(error);
  } catch (const std::bad_alloc&) {
    return "out of memory (host allocation failed)";
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "unknown native error";
  }
}

Napi::Value guard(Napi::Env env, const std::string& where, const std::function<Napi::Value()>& fn) {
  try {
    return fn();
  } catch (const Napi::Error&) {
    throw;
  } catch (...) {
    throw Napi::Error::New(env, withContext(where, describeException(std::current_exception())));
  }
}

Napi::Object requireObject(Napi::Value value, const std::string& what) {
  if (!value.IsObject()) throw std::invalid_argument(what + " must be an object");
  return value.As<Napi::Object>();
}

double requireNumber(Napi::Value value, const std::string& what) {
  if (!value.IsNumber()) throw std::invalid_argument(what + " must be a number");
  double x = value.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(x)) throw std::invalid_argument(what + " must be finite, got " + std::to_string(x));
  return x;
}

int64_t requireInteger(Napi::Value value, const std::string& what, int64_t min, int64_t max) {
  double x = requireNumber(value, what);
  if (x != std::floor(x)) throw std::invalid_argument(what + " must be an integer, got " + std::to_string(x));
  if (x < double(min) || x > double(max))
    throw std::invalid_argument(what + " must be in [" + std::to_string(min) + ", " + std::to_string(max) + "], got " +
                                std::to_string(int64_t(x)));
  return int64_t(x);
}

bool requireBoolean(Napi::Value value, const std::string& what) {
  if (!value.IsBoolean()) throw std::invalid_argument(what + " must be a boolean");
  return value.As<Napi::Boolean>().Value();
}

std::string requireString(Napi::Value value, const std::string& what) {
  if (!value.IsString()) throw std::invalid_argument(what + " must be a string");
  return value.As<Napi::String>().Utf8Value();
}

template <typename T>
static std::vector<T> requireTypedArray(Napi::Value value, napi_typedarray_type type, const char* typeName,
                                        const std::string& what) {
  if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != type)
    throw std::invalid_argument(what + " must be a " + typeName);
  auto array = value.As<Napi::TypedArrayOf<T>>();
  std::vector<T> out(array.ElementLength());
  if (!out.empty()) std::memcpy(out.data(), array.Data(), out.size() * sizeof(T));
  return out;
}

std::vector<int32_t> requireInt32Array(Napi::Value value, const std::string& what) {
  return requireTypedArray<int32_t>(value, napi_int32_array, "Int32Array", what);
}
std::vector<uint8_t> requireUint8Array(Napi::Value value, const std::string& what) {
  return requireTypedArray<uint8_t>(value, napi_uint8_array, "Uint8Array", what);
}
std::vector<float> requireFloat32Array(Napi::Value value, const std::string& what) {
  return requireTypedArray<float>(value, napi_float32_array, "Float32Array", what);
}

std::vector<int64_t> requireShape(Napi::Value value, const std::string& what) {
  if (!value.IsArray()) throw std::invalid_argument(what + " must be an array of non-negative integers");
  auto array = value.As<Napi::Array>();
  std::vector<int64_t> shape;
  for (uint32_t i = 0; i < array.Length(); i++)
    shape.push_back(requireInteger(array.Get(i), what + "[" + std::to_string(i) + "]", 0, int64_t(1) << 40));
  return shape;
}

Napi::Value makeInt32Array(Napi::Env env, const std::vector<int32_t>& values) {
  auto array = Napi::Int32Array::New(env, values.size());
  if (!values.empty()) std::memcpy(array.Data(), values.data(), values.size() * sizeof(int32_t));
  return array;
}

Napi::Value makeFloat32Array(Napi::Env env, const std::vector<float>& values) {
  auto array = Napi::Float32Array::New(env, values.size());
  if (!values.empty()) std::memcpy(array.Data(), values.data(), values.size() * sizeof(float));
  return array;
}

}  // namespace webgrpo::binding
