"""The TensorRT runner: the Runner interface over a serialized engine (TensorRT 10/11 tensor-name API).

Device memory and the stream come from cuda-python (cuda.bindings.runtime), not torch or pycuda:
it is NVIDIA's own thin binding of the CUDA runtime, a small wheel with no compiler step, which
is what a torch-free Jetson image can install. An engine runs only on the TensorRT version and GPU
that built it, so the build.json recorded beside it is checked before deserializing.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgekd.errors import BundleError
from edgekd.runtime.inputs import check_inputs

REBUILD = "rebuild it on the target with `edgekd build BUNDLE_DIR --target {target}` (or run its trtexec.sh there)"


def _describe(env: dict) -> str:
    return (f"TensorRT {env.get('tensorrt_version')} on {env.get('device')} "
            f"(compute capability {env.get('compute_capability')})")


def check_engine_compat(build: dict, current: dict, engine: str = "the engine") -> None:
    """Refuse an engine whose build.json names another TensorRT version or another GPU than `current`
    (both dicts with tensorrt_version, device, compute_capability)."""
    problems = []
    if str(build.get("tensorrt_version")) != str(current.get("tensorrt_version")):
        problems.append("TensorRT version")
    if str(build.get("compute_capability")) != str(current.get("compute_capability")) \
            or str(build.get("device")) != str(current.get("device")):
        problems.append("GPU")
    if problems:
        target = build.get("target") or "NAME"
        raise BundleError(f"{engine} was built with {_describe(build)}, but this machine has {_describe(current)}; "
                          f"a TensorRT engine only runs on the {' and '.join(problems)} that built it: "
                          + REBUILD.format(target=target))


def _require_trt() -> None:
    from edgekd.runtime.trt_env import trt_available

    ok, why = trt_available()
    if not ok:
        raise BundleError(f"the TensorRT runner needs the tensorrt package and a GPU ({why}); "
                          "use --backend onnxruntime")


def engine_key(bundle, key: str | None) -> str:
    """The bundle's engine for `key`: the key itself when it is an engine, else an engine built from
    it (key None: from any model), preferring one built for this machine's TensorRT and GPU."""
    models = bundle.models
    if key is None and bundle.picked("tensorrt"):  # a bench's pick, where it was built for this GPU/TensorRT
        from edgekd.runtime.trt_env import current_env

        try:
            check_engine_compat(_build_json(bundle, bundle.picked("tensorrt")), current_env())
            key = bundle.picked("tensorrt")
        except BundleError:
            pass
    if key is not None and models.get(bundle.resolve_key(key), {}).get("backend") == "tensorrt":
        return key
    engines = [k for k, m in models.items() if m.get("backend") == "tensorrt" and key in (None, m.get("source"))]
    if not engines:
        what = f"built from model {key}" if key else ""
        raise BundleError(f"this bundle has no TensorRT engine {what}".rstrip() + "; build one on this device with "
                          f"`edgekd build {bundle.path} --target NAME`, or use --backend onnxruntime")
    from edgekd.runtime.trt_env import current_env

    here = current_env()
    for k in sorted(engines, key=lambda k: models[k].get("source") != "student_int8_qdq"):
        try:
            check_engine_compat(_build_json(bundle, k), here)
            return k
        except BundleError:
            continue
    return engines[0]  # none fits: TrtRunner refuses it with the rebuild message


def _build_json(bundle, key: str) -> dict:
    rel = bundle.models[key].get("build")
    if not rel:
        raise BundleError(f"engine {key} has no build.json in the bundle; rebuild it with `edgekd build`")
    if rel not in bundle.manifest["files"]:  # only listed files were verified (and stay inside the bundle)
        raise BundleError(f"engine {key} names build info {rel!r}, which the bundle manifest does not list; "
                          "rebuild the engine with `edgekd build`")
    try:
        build = json.loads((bundle.path / rel).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BundleError(f"engine {key}: {rel} is not valid JSON ({type(e).__name__}); rebuild the engine with "
                          "`edgekd build`") from None
    if not isinstance(build, dict):
        raise BundleError(f"engine {key}: {rel} is not valid JSON build info (a {type(build).__name__}); rebuild "
                          "the engine with `edgekd build`")
    return build


class TrtRunner:
    """One engine, one execution context, one CUDA stream; device buffers grow with the batch."""

    def __init__(self, path, build: dict | None = None):
        from edgekd.runtime.trt_env import cuda_check, cudart, current_env

        _require_trt()
        import tensorrt as trt

        self.path, self._trt, self._rt, self._check = Path(path), trt, cudart(), cuda_check
        if build is not None:
            check_engine_compat(build, current_env(), self.path.name)
        self._logger = trt.Logger(trt.Logger.ERROR)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            target = (build or {}).get("target", "NAME")
            raise BundleError(f"TensorRT {trt.__version__} cannot load {self.path.name} (built by another TensorRT "
                              "version or for another GPU?); " + REBUILD.format(target=target))
        self._context = self._engine.create_execution_context()
        self._stream = self._check(self._rt.cudaStreamCreate(), "cudaStreamCreate")
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity in bytes)
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
        self._specs, self._batch = {}, {}  # input -> (dtype, dims with "batch"); input -> (min, max) batch
        for n in self.input_names:
            dims = ["batch" if d < 0 else int(d) for d in self._engine.get_tensor_shape(n)]
            self._specs[n] = (self._dtypes[n].name, dims)
            lo, _, hi = self._engine.get_tensor_profile_shape(n, 0)  # profile 0: the target's min/opt/max
            self._batch[n] = (int(lo[0]), int(hi[0]))

    def _device(self, name: str, nbytes: int) -> int:
        ptr, cap = self._buffers.get(name, (0, 0))
        if cap < nbytes:
            if ptr:
                self._check(self._rt.cudaFree(ptr), "cudaFree")
            ptr = self._check(self._rt.cudaMalloc(max(nbytes, 1)), "cudaMalloc")
            self._buffers[name] = (ptr, max(nbytes, 1))
            self._context.set_tensor_address(name, int(ptr))
        return ptr

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_inputs(self._specs, inputs, self.path.name)
        rt = self._rt
        h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        host = {n: np.ascontiguousarray(inputs[n]) for n in self.input_names}  # alive until the sync
        for name, x in host.items():
            lo, hi = self._batch[name]
            if not lo <= x.shape[0] <= hi:
                raise BundleError(f"input '{name}' has batch {x.shape[0]}, but {self.path.name} was built for batch "
                                  f"{lo}..{hi} (the target's batch min/max); split the batch or rebuild the engine")
            if not self._context.set_input_shape(name, x.shape):
                raise BundleError(f"TensorRT refuses shape {x.shape} for input '{name}' of {self.path.name}")
            ptr = self._device(name, x.nbytes)
            self._check(rt.cudaMemcpyAsync(ptr, x, x.nbytes, h2d, self._stream), "cudaMemcpyAsync")
        outs = {}
        for name in self.output_names:
            outs[name] = np.empty(tuple(self._context.get_tensor_shape(name)), self._dtypes[name])
            self._device(name, outs[name].nbytes)
        if not self._context.execute_async_v3(int(self._stream)):  # the stream's handle as an integer
            raise BundleError(f"TensorRT failed running {self.path.name}; run with a batch inside the engine's profile")
        for name, out in outs.items():
            self._check(rt.cudaMemcpyAsync(out, self._buffers[name][0], out.nbytes, d2h, self._stream),
                        "cudaMemcpyAsync")
        self._check(rt.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return outs

    def close(self) -> None:
        for ptr, _ in self._buffers.values():
            self._rt.cudaFree(ptr)
        self._buffers.clear()
        if getattr(self, "_stream", None) is not None:
            self._rt.cudaStreamDestroy(self._stream)
            self._stream = None
        self._context = self._engine = None


def open_bundle_engine(bundle, key: str | None = None) -> TrtRunner:
    """A TrtRunner for the bundle's engine for `key` (see engine_key), its build.json checked first."""
    _require_trt()
    k = engine_key(bundle, key)
    runner = TrtRunner(bundle.path / bundle.models[k]["file"], _build_json(bundle, k))
    runner.key = k  # the engine actually opened, for what a server reports
    return runner
