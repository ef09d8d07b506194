"""Independent checks of tritium's GGUF files with the PyPI `gguf` package (pip install gguf==0.19.0).

    python tests/interop/gguf_oracle.py check FILE.gguf EXPECT_DIR [--folded]
        Reads FILE with gguf.GGUFReader, dequantizes every tensor with gguf.quants, and compares with
        the values tritium's test wrote to EXPECT_DIR (NAME.trits: int8 trits; NAME.f32: f32 values;
        scales.json: per-tensor scales). TQ tensors must also equal gguf.quants.quantize of the same
        values byte for byte.
    python tests/interop/gguf_oracle.py write OUT_DIR
        Writes OUT_DIR/py.gguf with gguf.GGUFWriter and, beside it, the dequantized value of each
        tensor as NAME.f32, for tritium's reader to compare against.

Prints one line per tensor and ends with "N passed, M failed"; exits 1 on any failure.
"""

import json
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf.quants import dequantize, quantize

T = gguf.GGMLQuantizationType


def check(path, expect, folded):
    expect = Path(expect)
    scales = json.loads((expect / "scales.json").read_text())
    reader = gguf.GGUFReader(path)
    passed = failed = 0

    def report(ok, name, msg):
        nonlocal passed, failed
        print(("ok  " if ok else "FAIL") + f" {name}: {msg}")
        passed += ok
        failed += not ok

    arch = reader.fields["general.architecture"]
    report(bytes(arch.parts[arch.data[0]]).decode() == "bitnet", "general.architecture", "bitnet")
    tensors = {t.name: t for t in reader.tensors}
    for t in reader.tensors:
        name = t.name
        values = dequantize(t.data, t.tensor_type).reshape(-1).astype(np.float32)
        trit_file = expect / f"{name}.trits"
        f32_file = expect / f"{name}.f32"
        if trit_file.exists():
            trits = np.fromfile(trit_file, dtype=np.int8).astype(np.float32)
            s = np.float32(scales[name])
            if folded:
                err = np.abs(values - trits * s).max() / abs(s)
                report(err <= 4.9e-4, name, f"dequantized = trits × fp16(scale), max rel err {err:.2e}")
                source = (trits * s).reshape(-1, int(t.shape[0]))
            else:
                scale_t = tensors[name.replace(".weight", ".scale")]
                stored = dequantize(scale_t.data, scale_t.tensor_type).reshape(-1)[0]
                ok = np.array_equal(values, trits) and np.float32(stored) == s
                report(ok, name, f"trits exact and .scale = {stored!r} (expected {s!r}); product exact")
                source = trits.reshape(-1, int(t.shape[0]))
            ours = np.asarray(t.data).tobytes()
            theirs = quantize(source, t.tensor_type).tobytes()
            report(ours == theirs, name + " bytes", f"{len(ours)} bytes equal gguf.quants.quantize ({t.tensor_type.name})")
        elif f32_file.exists():
            want = np.fromfile(f32_file, dtype=np.float32)
            if t.tensor_type == T.F16:
                want = want.astype(np.float16).astype(np.float32)
            report(np.array_equal(values, want), name, f"{t.tensor_type.name} values equal")
        elif name.endswith(".scale"):
            continue  # checked with its weight
        else:
            report(False, name, "unexpected tensor")
    print(f"{passed} passed, {failed} failed")
    return failed == 0


def write(out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(out / "py.gguf"), "bitnet")
    w.add_uint32("test.count", 7)
    w.add_float32("test.eps", 1e-6)
    w.add_string("test.name", "written by gguf-py")
    w.add_array("test.list", ["a", "bb", "ccc"])
    rng = np.random.default_rng(0)
    tensors = {
        "f32": rng.standard_normal((3, 64)).astype(np.float32),
        "f16": rng.standard_normal((2, 32)).astype(np.float32),
        "q8": rng.standard_normal((2, 64)).astype(np.float32),
        "tq2": (rng.integers(-1, 2, (4, 256)) * 0.25).astype(np.float32),
        "tq1": (rng.integers(-1, 2, (2, 512)) * 1.5).astype(np.float32),
    }
    kinds = {"f32": T.F32, "f16": T.F16, "q8": T.Q8_0, "tq2": T.TQ2_0, "tq1": T.TQ1_0}
    for name, x in tensors.items():
        q = quantize(x, kinds[name])
        w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=kinds[name])
        dequantize(q, kinds[name]).astype(np.float32).tofile(out / f"{name}.f32")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {out / 'py.gguf'}")
    return True


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "check":
        ok = check(sys.argv[2], sys.argv[3], "--folded" in sys.argv)
    elif cmd == "write":
        ok = write(sys.argv[2])
    else:
        print(__doc__)
        ok = False
    sys.exit(0 if ok else 1)
