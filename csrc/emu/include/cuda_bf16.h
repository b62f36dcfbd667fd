// flowfast SIMT emulation: __nv_bfloat16 is the CPU kernels' bfloat16 storage type.
#pragma once
#include "cuda_runtime.h"
#include "flowfast/half.h"
using __nv_bfloat16 = ::ff::BFloat16;
