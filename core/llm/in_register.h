// InRegister(v): keeps a loaded SIMD vector in a register for all its uses.
//
// GCC folds each use of a loaded vector into its instruction as a memory
// operand, loading it again for every use: the decode kernels' inner loops
// (gemv_avx2.cc, quant_avx2.cc) then made twice the loads they need, and
// the two 256-bit load ports, not the arithmetic, set their pace. An empty
// asm that claims to modify the value pins it in one register. (No
// intrinsics here: included by kernel files compiled with their own flags.)
#pragma once

namespace internvl::llm {

template <typename V>
inline V InRegister(V v) {
#ifdef __AVX512F__
  __asm__("" : "+v"(v));  // any of the 32 vector registers (EVEX)
#else
  __asm__("" : "+x"(v));
#endif
  return v;
}

}  // namespace internvl::llm
