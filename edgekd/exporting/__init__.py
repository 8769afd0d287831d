"""ONNX export of students and teachers, the parity ladder, and the offline TensorRT lint."""
