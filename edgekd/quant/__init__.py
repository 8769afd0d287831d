"""INT8 quantization of fused students with NVIDIA ModelOpt: BatchNorm folding, calibration,
quantization-aware fine-tuning, and a ModelOpt state the export stage rebuilds the model from."""
