"""What this machine can build and run: TensorRT, a CUDA GPU (through cuda-python), a Jetson.

Everything is imported lazily and every probe answers instead of raising, because the same code
runs on development machines (neither TensorRT nor a GPU), x86 GPU hosts and Jetson modules.
"""
from __future__ import annotations

import re
from pathlib import Path

from edgekd.errors import BundleError

TEGRA_RELEASE = Path("/etc/nv_tegra_release")
# L4T release -> JetPack release (NVIDIA's JetPack archive); an unlisted L4T reports jetpack None
JETPACK = {"35.3.1": "5.1.1", "35.4.1": "5.1.2", "35.5.0": "5.1.3", "35.6.0": "5.1.4", "35.6.1": "5.1.5",
           "36.3.0": "6.0", "36.4.0": "6.1", "36.4.3": "6.2", "36.4.4": "6.2.1"}


def cudart():
    """cuda-python's runtime module (cuda.bindings.runtime since 12.6.1; cuda.cudart before)."""
    try:
        from cuda.bindings import runtime
        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart as runtime
        return runtime
    except ImportError:
        raise BundleError("TensorRT device memory needs cuda-python (pip install 'cuda-python>=12,<14', "
                          "matching the CUDA major version of this machine)") from None


def cuda_check(result, what: str):
    """Unpack a cuda-python call's (err, *values) tuple, raising on an error code."""
    rt = cudart()
    err, values = result[0], result[1:]
    if err != rt.cudaError_t.cudaSuccess:
        name = rt.cudaGetErrorName(err)[1]
        raise BundleError(f"CUDA error in {what}: {name.decode() if isinstance(name, bytes) else name}")
    return values[0] if len(values) == 1 else values


def trt_version() -> str | None:
    try:
        import tensorrt
    except ImportError:
        return None
    return str(tensorrt.__version__)


def trt_major(version: str | None = None) -> int:
    version = version or trt_version() or "0"
    return int(version.split(".")[0])


def gpu_info() -> dict:
    """{"device": name, "compute_capability": "8.7", "memory_mib": n} of CUDA device 0."""
    rt = cudart()
    prop = cuda_check(rt.cudaGetDeviceProperties(0), "cudaGetDeviceProperties")
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return {"device": name.split("\x00")[0].strip(), "compute_capability": f"{prop.major}.{prop.minor}",
            "memory_mib": int(prop.totalGlobalMem) >> 20}


def trt_available() -> tuple[bool, str]:
    """(True, "") where an engine can be built and run here, else (False, why)."""
    version = trt_version()
    if version is None:
        return False, ("the tensorrt Python package is not installed (on Jetson it comes with JetPack; on x86 "
                       "`pip install tensorrt`)")
    if trt_major(version) < 10:
        return False, f"TensorRT {version} is older than 10; edgekd builds with TensorRT 10.x or 11.x (JetPack 6.1+)"
    try:
        rt = cudart()
        count = cuda_check(rt.cudaGetDeviceCount(), "cudaGetDeviceCount")
    except BundleError as e:
        return False, f"no usable CUDA GPU ({e})"
    except Exception as e:  # noqa: BLE001 -- a missing driver surfaces as several error types
        return False, f"no usable CUDA GPU ({type(e).__name__}: {e})"
    if not count:
        return False, "no CUDA GPU is visible (cudaGetDeviceCount returned 0)"
    return True, ""


def jetson_release(path: Path = TEGRA_RELEASE) -> dict | None:
    """{"l4t": "36.4.0", "jetpack": "6.1"} on a Jetson (from /etc/nv_tegra_release), else None."""
    try:
        head = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()[0]
    except (OSError, IndexError):
        return None
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)\.(\d+)", head)
    if not m:
        return {"l4t": None, "jetpack": None, "raw": head.strip()}
    l4t = f"{m.group(1)}.{m.group(2)}.{m.group(3)}"
    return {"l4t": l4t, "jetpack": JETPACK.get(l4t)}


def current_env() -> dict:
    """The facts an engine is tied to: TensorRT version and GPU (plus the Jetson release)."""
    return {"tensorrt_version": trt_version(), **gpu_info(), "jetson": jetson_release()}
