"""Device-side code: numpy (+ onnxruntime/TensorRT in later stages). Never imports torch."""
