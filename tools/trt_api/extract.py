#!/usr/bin/env python3
"""List the Python names a TensorRT bindings wheel exposes, without TensorRT's libraries or a GPU.

    python3.11 tools/trt_api/extract.py tensorrt_cu12_bindings-10.16.1.11-cp311-none-manylinux_2_28_x86_64.whl \
        -o tests/data/trt_api/tensorrt-10.txt

Output: a sorted text file, one name a line, after a '#' header naming the wheel and its sha256:
top-level names (`Builder`, `BuilderFlag`, `nptype`, `__version__`) and dotted member names
(`Builder.create_network`, `BuilderFlag.INT8`, `ILogger.Severity.ERROR`).

How. The bindings' extension module (tensorrt.so, pybind11) registers its classes, methods,
properties and enum members at import time. The binary holds their names as bare C strings, but
not which class each belongs to, and no signatures naming them: pybind11 assembles
"create_network(self: tensorrt.tensorrt.Builder, ...)" at run time from type templates such as
"({%}, {int}) -> %". So the names are read from the module itself: the wheel's package is
unpacked into a temporary directory, the extension module's links to TensorRT's libraries
(libnvinfer*, libnvonnxparser*) are cut in that copy -- those DT_NEEDED entries are pointed at
libc, and its undefined symbols are marked weak, so the dynamic loader leaves what no library
defines at 0 -- and the package is imported in a child Python, which walks dir() of the module
and of each class (this runs the wheel's own import code, as `import tensorrt` would). Importing
only registers types; a call into TensorRT at import (none in 10.x/11.x) would crash the child,
which fails the extraction rather than giving a partial list.

The child must be the CPython version the wheel was built for (cp311 -> python3.11, see --python)
on Linux x86_64. Standard library only.

Cross-check: each part of each name is looked up among the C strings of the binary and the words
of the wheel's Python files; names found nowhere are reported on stderr (none, for 10.16 and 11.4).
Left out: private names (`_x`) except `__version__`, dunders a TensorRT class does not define
itself (those of `object`), pybind11's internals, the modules the package imports (os, sys, ...)
and the `plugin` subpackage, which `import tensorrt` does not load.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# libraries of TensorRT itself, absent here; everything else (libc, libstdc++, python) is real
TRT_LIBS = re.compile(r"^lib(nvinfer|nvonnxparser|nvparsers)")

DT_NULL, DT_NEEDED, DT_STRTAB = 0, 1, 5
SHT_DYNSYM, SHT_DYNAMIC = 11, 6
STB_GLOBAL, STB_WEAK = 1, 2


# --------------------------------------------------------------------------- cutting the links


def _sections(elf: bytes) -> list[dict]:
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise SystemExit("not a 64-bit little-endian ELF file (this script handles Linux x86_64/aarch64 wheels)")
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", elf, 0x3A)
    out = []
    for i in range(shnum):
        _, typ, _, addr, off, size, link, _, _, entsize = struct.unpack_from("<IIQQQQIIQQ", elf, shoff + i * shentsize)
        out.append({"type": typ, "addr": addr, "off": off, "size": size, "link": link, "entsize": entsize})
    return out


def _cstr(elf: bytes, off: int) -> str:
    return elf[off:elf.index(b"\0", off)].decode()


def cut_trt_links(so: bytes) -> tuple[bytes, list[str]]:
    """A copy of the extension module that loads without TensorRT's libraries; returns it and the
    names of the DT_NEEDED entries that were cut."""
    elf = bytearray(so)
    secs = _sections(so)
    dynamic = next(s for s in secs if s["type"] == SHT_DYNAMIC)
    dynstr = secs[dynamic["link"]]
    entries = [struct.unpack_from("<qQ", so, dynamic["off"] + i * 16) for i in range(dynamic["size"] // 16)]
    needed = {i: _cstr(so, dynstr["off"] + val) for i, (tag, val) in enumerate(entries) if tag == DT_NEEDED}
    libc = next((entries[i][1] for i, name in needed.items() if name.startswith("libc.so")), None)
    if libc is None:
        raise SystemExit("the extension module does not link libc; cannot redirect its TensorRT libraries")
    cut = []
    for i, name in needed.items():
        if TRT_LIBS.match(name):
            struct.pack_into("<qQ", elf, dynamic["off"] + i * 16, DT_NEEDED, libc)  # a second libc: harmless
            cut.append(name)
    dynsym = next(s for s in secs if s["type"] == SHT_DYNSYM)
    for off in range(dynsym["off"], dynsym["off"] + dynsym["size"], 24):
        info, shndx = elf[off + 4], struct.unpack_from("<H", elf, off + 6)[0]
        if shndx == 0 and info >> 4 == STB_GLOBAL:  # undefined: found in libc/libstdc++/python, else left 0
            elf[off + 4] = (STB_WEAK << 4) | (info & 0xF)
    return bytes(elf), cut


# --------------------------------------------------------------------------- walking the module (child)


WALK = r'''
import importlib, inspect, json, re, sys, types
mod = importlib.import_module(sys.argv[1])
HOME = {mod.__name__, mod.__name__ + ".tensorrt"}  # the package and its extension module
PREFIX = re.compile(r"\b(?:tensorrt_bindings|tensorrt)\.(?:tensorrt\.)?")

def ours(cls):
    return isinstance(cls, type) and getattr(cls, "__module__", "") in HOME

def returns(name, value):
    # what pybind11's signature line(s) in the docstring say a function returns ("1. name(...) -> X" when overloaded)
    doc = getattr(value, "__doc__", None) if callable(value) else None
    found = re.findall(rf"^(?:\d+\. )?{re.escape(name)}\(.*\) -> (.+)$", doc or "", re.M)
    kinds = sorted({PREFIX.sub("", r.strip()) for r in found})
    return " | ".join(kinds) or None

def members(cls, prefix, out, ret, depth):
    own = set()
    for base in cls.__mro__:  # dunders only where TensorRT's classes define them (not object's)
        if ours(base):
            own |= {k for k in vars(base) if k.startswith("__") and k.endswith("__") and "pybind11" not in k}
    for name in dir(cls):
        if name.startswith("_") and name not in own or name in ("__dict__", "__doc__", "__module__"):
            continue
        out.add(prefix + name)
        value = inspect.getattr_static(cls, name, None)
        if depth and ours(value) and value is not cls:  # nested classes: ILogger.Severity
            members(value, prefix + name + ".", out, ret, depth - 1)
        elif not name.startswith("_") and not isinstance(value, property) and returns(name, getattr(cls, name)):
            ret[prefix + name] = returns(name, getattr(cls, name))

out, ret = set(), {}
for name in dir(mod):
    value = getattr(mod, name)
    if name.startswith("_") and name != "__version__" or isinstance(value, types.ModuleType):
        continue
    out.add(name)
    if ours(value):
        members(value, name + ".", out, ret, 2)
    elif returns(name, value):
        ret[name] = returns(name, value)
print(json.dumps({"version": getattr(mod, "__version__", None), "names": sorted(out), "returns": ret}))
'''


def wheel_tag_python(wheel: Path) -> str | None:
    """'3.11' from a cp311 wheel name, None when the name has no CPython tag."""
    m = re.search(r"-cp(\d)(\d+)-", wheel.name)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def extract(wheel: Path, python: str) -> dict:
    with zipfile.ZipFile(wheel) as zf, tempfile.TemporaryDirectory(prefix="trt_api_") as tmp:
        files = zf.namelist()
        exts = [f for f in files if re.search(r"(^|/)tensorrt[^/]*\.so$", f)]
        if not exts:
            raise SystemExit(f"{wheel.name}: no tensorrt*.so extension module inside")
        package = exts[0].split("/")[0]  # tensorrt_bindings (or tensorrt)
        zf.extractall(tmp, [f for f in files if f.startswith(package + "/")])
        cut = []
        for ext in exts:
            path = Path(tmp) / ext
            data, cut_here = cut_trt_links(path.read_bytes())
            path.write_bytes(data)
            cut += cut_here
        run = subprocess.run([python, "-I", "-c", f"import sys; sys.path.insert(0, {tmp!r})\n" + WALK, package],
                             capture_output=True, text=True, cwd=tmp, env={"PATH": os.environ.get("PATH", "")})
        if run.returncode != 0:
            raise SystemExit(f"importing {package} from {wheel.name} with {python} failed (rc {run.returncode}):\n"
                             f"{run.stderr[-3000:]}")
        result = json.loads(run.stdout)
        # C strings of the binary (with their tails: the linker merges "network" into "create_network")
        # and the words of the Python sources
        words = {c_str[i:].decode() for f in exts for c_str in re.findall(rb"([A-Za-z0-9_]+)\0", zf.read(f))
                 for i in range(len(c_str))}
        words |= {w for f in files if f.startswith(package + "/") and f.endswith(".py")
                  for w in re.findall(r"\w+", zf.read(f).decode("utf-8", "replace"))}
    result.update(package=package, cut=sorted(set(cut)))
    result["not_in_wheel_strings"] = [n for n in result["names"] if not set(n.split(".")) <= words]
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("wheel", type=Path, help="a tensorrt-cuXX-bindings wheel (pip download --no-deps ...)")
    ap.add_argument("-o", "--output", type=Path, help="text file to write (default: stdout)")
    ap.add_argument("--returns", type=Path, help="also write 'name -> type' for each function and method whose "
                    "pybind11 signature states a return type (what the test checks its receiver table against)")
    ap.add_argument("--python", help="the CPython to import with (default: this one; must match the wheel's cpXY tag)")
    args = ap.parse_args(argv)
    need = wheel_tag_python(args.wheel)
    python = args.python or sys.executable
    if args.python is None and need and need != f"{sys.version_info[0]}.{sys.version_info[1]}":
        raise SystemExit(f"{args.wheel.name} is built for CPython {need}; run this script with python{need} "
                         f"or pass --python python{need}")
    result = extract(args.wheel, python)
    sha = hashlib.sha256(args.wheel.read_bytes()).hexdigest()
    header = [f"# TensorRT Python API {{}} of {args.wheel.name}",
              f"# tensorrt.__version__ {result['version']}; wheel sha256 {sha}",
              "# generated by tools/trt_api/extract.py (imports the wheel's bindings without TensorRT's libraries; "
              "see tools/trt_api/README.md)"]
    text = "\n".join([header[0].format("names")] + header[1:] + result["names"]) + "\n"
    if args.returns:
        lines = [f"{name} -> {kind}" for name, kind in sorted(result["returns"].items())]
        args.returns.write_text("\n".join([header[0].format("return types")] + header[1:] + lines) + "\n",
                                encoding="utf-8")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    missing = result["not_in_wheel_strings"]
    print(f"{args.wheel.name}: {len(result['names'])} names (package {result['package']}, cut links to "
          f"{', '.join(result['cut']) or 'nothing'}); {len(missing)} not found as strings in the wheel"
          + (f", e.g. {', '.join(missing[:8])}" if missing else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
