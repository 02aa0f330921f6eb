// Factory of the CUDA engine (engine_cuda.cu). The addon reaches it through registerEngineFactory(Device::CUDA)
// at load time; tests and tools may call it directly.
#pragma once
#include <memory>

#include "engine.h"

namespace webgrpo {

// Throws std::runtime_error when no CUDA device is visible, std::invalid_argument for unsupported configs.
std::unique_ptr<Engine> createCudaEngine(const ModelConfig& config, int threads);

}  // namespace webgrpo
