#include "tensor.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <sstream>

#ifdef WEBGRPO_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace webgrpo {

size_t dtypeSize(DType dtype) { return dtype == DType::F32 ? 4 : 2; }

const char* dtypeName(DType dtype) {
  switch (dtype) {
    case DType::F32: return "f32";
    case DType::BF16: return "bf16";
    case DType::F16: return "f16";
  }
  return "?";
}

DType parseDType(const std::string& name) {
  if (name == "f32") return DType::F32;
  if (name == "bf16") return DType::BF16;
  if (name == "f16") return DType::F16;
  throw std::invalid_argument("unknown dtype '" + name + "' (expected f32, bf16 or f16)");
}

const char* deviceName(Device device) { return device == Device::CPU ? "cpu" : "cuda"; }

Device parseDevice(const std::string& name) {
  if (name == "cpu") return Device::CPU;
  if (name == "cuda") return Device::CUDA;
  throw std::invalid_argument("unknown device '" + name + "' (expected cpu or cuda)");
}

float bf16ToFloat(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t floatToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);  // quiet NaN
  uint32_t roundingBias = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + roundingBias) >> 16);
}

float f16ToFloat(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0) {
    if (mantissa == 0) {
      bits = sign;
    } else {  // subnormal: normalize
      int e = -1;
      do {
        e++;
        mantissa <<= 1;
      } while ((mantissa & 0x400u) == 0);
      bits = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((mantissa & 0x3ffu) << 13);
    }
  } else if (exponent == 31) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else {
    bits = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t floatToF16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  uint32_t absBits = bits & 0x7fffffffu;
  if (absBits > 0x7f800000u) return sign | 0x7e00u;      // NaN
  if (absBits >= 0x477ff000u) return sign | 0x7c00u;     // overflow (after rounding) -> inf
  if (absBits < 0x38800000u) {                           // subnormal or zero in f16
    if (absBits < 0x33000000u) return sign;              // rounds to zero
    // value = mantissa24 * 2^(E-150); in units of the f16 subnormal step 2^-24 that is mantissa24 >> (126-E).
    uint32_t exponent = absBits >> 23;
    uint32_t mantissa = (absBits & 0x7fffffu) | 0x800000u;
    uint32_t s = 126 - exponent;
    uint32_t result = mantissa >> s;
    uint32_t remainder = mantissa & ((1u << s) - 1u);
    uint32_t half = 1u << (s - 1);
    if (remainder > half || (remainder == half && (result & 1u))) result++;
    return sign | static_cast<uint16_t>(result);
  }
  uint32_t rounded = absBits + 0xfffu + ((absBits >> 13) & 1u);
  return sign | static_cast<uint16_t>((rounded - 0x38000000u) >> 13);
}

void convertToFloat32(const void* src, DType dtype, float* dst, size_t n) {
  if (dtype == DType::F32) {
    std::memcpy(dst, src, n * 4);
    return;
  }
  const uint16_t* s = static_cast<const uint16_t*>(src);
  if (dtype == DType::BF16)
    for (size_t i = 0; i < n; i++) dst[i] = bf16ToFloat(s[i]);
  else
    for (size_t i = 0; i < n; i++) dst[i] = f16ToFloat(s[i]);
}

void convertFromFloat32(const float* src, DType dtype, void* dst, size_t n) {
  if (dtype == DType::F32) {
    std::memcpy(dst, src, n * 4);
    return;
  }
  uint16_t* d = static_cast<uint16_t*>(dst);
  if (dtype == DType::BF16)
    for (size_t i = 0; i < n; i++) d[i] = floatToBf16(src[i]);
  else
    for (size_t i = 0; i < n; i++) d[i] = floatToF16(src[i]);
}

std::string shapeToString(const std::vector<int64_t>& shape) {
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < shape.size(); i++) out << (i ? "," : "") << shape[i];
  out << ']';
  return out.str();
}

int64_t shapeNumel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) throw std::invalid_argument("negative dimension in shape " + shapeToString(shape));
    n *= d;
  }
  return n;
}

#ifdef WEBGRPO_WITH_CUDA
static void checkCuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(err));
}
#endif

static void requireCudaBuild() {
#ifndef WEBGRPO_WITH_CUDA
  throw std::runtime_error("device 'cuda' is not available: this addon was built without CUDA");
#endif
}

Storage::Storage(size_t bytes, Device device) : bytes_(bytes), device_(device) {
  size_t allocBytes = bytes ? bytes : 1;
  if (device == Device::CPU) {
    data_ = std::malloc(allocBytes);
    if (!data_) throw std::runtime_error("out of host memory allocating " + std::to_string(bytes) + " bytes");
  } else {
    requireCudaBuild();
#ifdef WEBGRPO_WITH_CUDA
    cudaError_t err = cudaMalloc(&data_, allocBytes);
    if (err == cudaErrorMemoryAllocation)
      throw std::runtime_error("out of GPU memory allocating " + std::to_string(bytes) + " bytes");
    if (err != cudaSuccess)  // no driver, no device, a broken context: not a memory problem
      throw std::runtime_error("cannot allocate " + std::to_string(bytes) + " bytes on the cuda device: " +
                               cudaGetErrorString(err));
#endif
  }
}

Storage::~Storage() {
  if (!data_) return;
  if (device_ == Device::CPU) std::free(data_);
#ifdef WEBGRPO_WITH_CUDA
  else cudaFree(data_);
#endif
}

Tensor::Tensor(std::vector<int64_t> shape, DType dtype, Device device)
    : shape_(std::move(shape)), dtype_(dtype), device_(device) {
  numel_ = shapeNumel(shape_);
  storage_ = std::make_shared<Storage>(static_cast<size_t>(numel_) * dtypeSize(dtype), device);
}

std::vector<uint8_t> Tensor::toBytes() const {
  std::vector<uint8_t> out(bytes());
  if (out.empty()) return out;
  if (device_ == Device::CPU) {
    std::memcpy(out.data(), data(), out.size());
  } else {
#ifdef WEBGRPO_WITH_CUDA
    checkCuda(cudaMemcpy(out.data(), data(), out.size(), cudaMemcpyDeviceToHost), "Tensor::toBytes");
#endif
  }
  return out;
}

std::vector<float> Tensor::toFloat32() const {
  std::vector<float> out(static_cast<size_t>(numel_));
  if (device_ == Device::CPU) {
    convertToFloat32(data(), dtype_, out.data(), out.size());
  } else {
    std::vector<uint8_t> host = toBytes();
    convertToFloat32(host.data(), dtype_, out.data(), out.size());
  }
  return out;
}

Tensor Tensor::fromBytes(const void* bytes, size_t nbytes, std::vector<int64_t> shape, DType dtype, Device device) {
  int64_t n = shapeNumel(shape);
  if (static_cast<size_t>(n) * dtypeSize(dtype) != nbytes)
    throw std::invalid_argument("tensor of shape " + shapeToString(shape) + " and dtype " + dtypeName(dtype) +
                                " needs " + std::to_string(n * dtypeSize(dtype)) + " bytes, got " +
                                std::to_string(nbytes));
  Tensor t(std::move(shape), dtype, device);
  if (nbytes == 0) return t;
  if (device == Device::CPU) {
    std::memcpy(t.data(), bytes, nbytes);
  } else {
#ifdef WEBGRPO_WITH_CUDA
    checkCuda(cudaMemcpy(t.data(), bytes, nbytes, cudaMemcpyHostToDevice), "Tensor::fromBytes");
#endif
  }
  return t;
}

Tensor Tensor::fromFloat32(const float* values, size_t n, std::vector<int64_t> shape, DType dtype, Device device) {
  int64_t expected = shapeNumel(shape);
  if (static_cast<size_t>(expected) != n)
    throw std::invalid_argument("tensor of shape " + shapeToString(shape) + " needs " + std::to_string(expected) +
                                " values, got " + std::to_string(n));
  std::vector<uint8_t> converted(n * dtypeSize(dtype));
  convertFromFloat32(values, dtype, converted.data(), n);
  return fromBytes(converted.data(), converted.size(), std::move(shape), dtype, device);
}

bool cudaAvailable() {
#ifdef WEBGRPO_WITH_CUDA
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) return false;
  return count > 0;
#else
  return false;
#endif
}

}  // namespace webgrpo
