"""Serving a bundle over HTTP on the device (`edgekd serve`; the [serve] extra: Starlette, uvicorn,
prometheus-client). Torch-free, like the rest of the device side."""
