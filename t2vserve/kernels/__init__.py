"""Low-precision kernels the torch runner runs for quantized tracks."""
