// flowfast SIMT emulation: the constants of CUDA's math_constants.h that the kernels use.
#pragma once
#define CUDART_INF __builtin_inf()
#define CUDART_INF_F __builtin_inff()
#define CUDART_NAN __builtin_nan("")
#define CUDART_NAN_F __builtin_nanf("")
