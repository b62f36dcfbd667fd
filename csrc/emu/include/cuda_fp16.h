// flowfast SIMT emulation: __half is the CPU kernels' binary16 storage type (round to nearest
// even from float, as CUDA's float -> __half conversion does).
#pragma once
#include "cuda_runtime.h"
#include "flowfast/half.h"
using __half = ::ff::Half;
