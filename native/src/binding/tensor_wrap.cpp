// NativeTensor: a JS handle that owns a native Tensor until dispose() (or the finalizer) releases it.
#include <cstring>

#include "binding/binding.h"

namespace webgrpo::binding {

namespace {

class TensorWrap : public Napi::ObjectWrap<TensorWrap> {
 public:
  static Napi::Function define(Napi::Env env) {
    return DefineClass(env, "NativeTensor",
                       {
                           InstanceAccessor<&TensorWrap::shape>("shape"),
                           InstanceAccessor<&TensorWrap::dtype>("dtype"),
                           InstanceAccessor<&TensorWrap::device>("device"),
                           InstanceAccessor<&TensorWrap::disposed>("disposed"),
                           InstanceMethod<&TensorWrap::toFloat32>("toFloat32"),
                           InstanceMethod<&TensorWrap::toBytes>("toBytes"),
                           InstanceMethod<&TensorWrap::dispose>("dispose"),
                       });
  }

  explicit TensorWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TensorWrap>(info) {
    if (info.Length() != 1 || !info[0].IsExternal())
      throw Napi::TypeError::New(info.Env(), "NativeTensor cannot be constructed directly; use tensorFromBytes() or tensorFromFloat32()");
    Tensor* raw = info[0].As<Napi::External<Tensor>>().Data();
    tensor_ = std::make_unique<Tensor>(std::move(*raw));
    delete raw;
    shape_ = tensor_->shape();
    dtype_ = tensor_->dtype();
    device_ = tensor_->device();
    accountedBytes_ = int64_t(tensor_->bytes());
    if (device_ == Device::CPU) Napi::MemoryManagement::AdjustExternalMemory(info.Env(), accountedBytes_);
  }

  ~TensorWrap() override = default;  // the finalizer: unique_ptr frees the storage

  const Tensor& tensor(Napi::Env env, const std::string& what) const {
    if (!tensor_) throw Napi::Error::New(env, what + ": NativeTensor used after dispose()");
    return *tensor_;
  }

 private:
  Napi::Value shape(const Napi::CallbackInfo& info) {
    auto array = Napi::Array::New(info.Env(), shape_.size());
    for (size_t i = 0; i < shape_.size(); i++) array.Set(uint32_t(i), Napi::Number::New(info.Env(), double(shape_[i])));
    return array;
  }
  Napi::Value dtype(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), dtypeName(dtype_)); }
  Napi::Value device(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), deviceName(device_)); }
  Napi::Value disposed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), !tensor_); }

  Napi::Value toFloat32(const Napi::CallbackInfo& info) {
    return guard(info.Env(), "NativeTensor.toFloat32", [&]() -> Napi::Value {
      return makeFloat32Array(info.Env(), tensor(info.Env(), "NativeTensor.toFloat32").toFloat32());
    });
  }

  Napi::Value toBytes(const Napi::CallbackInfo& info) {
    return guard(info.Env(), "NativeTensor.toBytes", [&]() -> Napi::Value {
      std::vector<uint8_t> bytes = tensor(info.Env(), "NativeTensor.toBytes").toBytes();
      return Napi::Buffer<uint8_t>::Copy(info.Env(), bytes.data(), bytes.size());
    });
  }

  Napi::Value dispose(const Napi::CallbackInfo& info) {
    if (tensor_) {
      tensor_.reset();
      if (device_ == Device::CPU) Napi::MemoryManagement::AdjustExternalMemory(info.Env(), -accountedBytes_);
    }
    return info.Env().Undefined();
  }

  std::unique_ptr<Tensor> tensor_;
  std::vector<int64_t> shape_;
  DType dtype_ = DType::F32;
  Device device_ = Device::CPU;
  int64_t accountedBytes_ = 0;
};

}  // namespace

void initTensorClass(Napi::Env env, AddonData& data) {
  data.tensorConstructor = Napi::Persistent(TensorWrap::define(env));
}

Napi::Object wrapTensor(Napi::Env env, Tensor tensor) {
  AddonData* data = env.GetInstanceData<AddonData>();
  auto* raw = new Tensor(std::move(tensor));
  return data->tensorConstructor.New({Napi::External<Tensor>::New(env, raw)});
}

const Tensor& unwrapTensor(Napi::Env env, Napi::Value value, const std::string& what) {
  AddonData* data = env.GetInstanceData<AddonData>();
  if (!value.IsObject() || !value.As<Napi::Object>().InstanceOf(data->tensorConstructor.Value()))
    throw std::invalid_argument(what + " must be a NativeTensor");
  return TensorWrap::Unwrap(value.As<Napi::Object>())->tensor(env, what);
}

}  // namespace webgrpo::binding
