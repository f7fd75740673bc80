"""Compiled kernels for the CPU (`cpu`: the depthwise convolution as an XLA FFI call),
built from their C++ sources on first use. The lowest layer: imports nothing of
dnas_jax."""
