#pragma once
// A chain of `kernels` small kernels of `blocks` x `threads` in one CUDA graph, each block reading what
// another block of the previous kernel wrote: microseconds per kernel (median of 10 replays). mode 0:
// stream order; 1: programmatic dependent launch with griddepcontrol.wait; 2: programmatic dependent
// launch, each kernel waiting on a counter the previous kernel's blocks raise. *ok: the chain's result
// is right (every element incremented once per kernel).
double boundary_chain_us(int mode, int kernels, int blocks, int threads, bool* ok);
