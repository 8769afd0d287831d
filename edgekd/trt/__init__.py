"""TensorRT engine builds for deployment targets (export/targets/*.yaml). Torch-free.

`targets` (the strict target schema and lookup), `trtexec` (the equivalent command line, written
where no engine can be built), `env` (TensorRT / GPU / Jetson detection), `builder` (the TensorRT
10/11 Python build), `bundle_build` (build-or-skip for a run directory or a copied bundle).
`tensorrt` and `cuda-python` are imported only when a build or a run needs them.
"""
