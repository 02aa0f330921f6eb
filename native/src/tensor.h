// Tensor: an owning, typed, shaped buffer on the host (cpu) or a GPU (cuda). The engines keep their own
// parameter arenas; Tensor is what crosses the binding (parameters in and out, safetensors bytes).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace webgrpo {

enum class DType { F32, BF16, F16 };
enum class Device { CPU, CUDA };

size_t dtypeSize(DType dtype);
const char* dtypeName(DType dtype);
DType parseDType(const std::string& name);  // "f32" | "bf16" | "f16", throws otherwise
const char* deviceName(Device device);
Device parseDevice(const std::string& name);  // "cpu" | "cuda", throws otherwise

// Scalar conversions (round to nearest even, NaN kept NaN).
float bf16ToFloat(uint16_t v);
uint16_t floatToBf16(float f);
float f16ToFloat(uint16_t v);
uint16_t floatToF16(float f);

// Converts n values between a raw host buffer of `dtype` and fp32.
void convertToFloat32(const void* src, DType dtype, float* dst, size_t n);
void convertFromFloat32(const float* src, DType dtype, void* dst, size_t n);

std::string shapeToString(const std::vector<int64_t>& shape);
int64_t shapeNumel(const std::vector<int64_t>& shape);  // throws on a negative dimension

// Device memory block; frees itself. Host memory is plain malloc'd bytes, CUDA memory is cudaMalloc'd.
class Storage {
 public:
  Storage(size_t bytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() { return data_; }
  const void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  Device device_;
};

class Tensor {
 public:
  Tensor() = default;
  Tensor(std::vector<int64_t> shape, DType dtype, Device device);

  const std::vector<int64_t>& shape() const { return shape_; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  int64_t numel() const { return numel_; }
  size_t bytes() const { return static_cast<size_t>(numel_) * dtypeSize(dtype_); }
  void* data() { return storage_ ? storage_->data() : nullptr; }
  const void* data() const { return storage_ ? storage_->data() : nullptr; }

  // Host copies, whatever the device.
  std::vector<float> toFloat32() const;
  std::vector<uint8_t> toBytes() const;

  // Builds a tensor of `dtype` on `device` from host bytes of that dtype, or from fp32 values (converted).
  static Tensor fromBytes(const void* bytes, size_t nbytes, std::vector<int64_t> shape, DType dtype, Device device);
  static Tensor fromFloat32(const float* values, size_t n, std::vector<int64_t> shape, DType dtype, Device device);

 private:
  std::vector<int64_t> shape_;
  DType dtype_ = DType::F32;
  Device device_ = Device::CPU;
  int64_t numel_ = 0;
  std::shared_ptr<Storage> storage_;
};

// True when this build has CUDA and at least one device is visible.
bool cudaAvailable();

}  // namespace webgrpo
