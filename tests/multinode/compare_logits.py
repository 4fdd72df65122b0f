#!/usr/bin/env python3
"""Compares tensor 'logits' (float32) of two safetensors files, standard library only.
usage: compare_logits.py GOT.safetensors REFERENCE.safetensors [TOLERANCE]
Exit 0 when max |got - ref| <= TOLERANCE * max(1, max |ref|) and the shapes agree."""
import json
import struct
import sys


def load(path, name="logits"):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        t = header[name]
        if t["dtype"] != "F32":
            sys.exit(f"{path}: {name} is {t['dtype']}, expected F32")
        begin, end = t["data_offsets"]
        f.seek(8 + n + begin)
        data = f.read(end - begin)
    return t["shape"], struct.unpack(f"<{len(data) // 4}f", data)


got_shape, got = load(sys.argv[1])
ref_shape, ref = load(sys.argv[2])
tol = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-4
if got_shape != ref_shape:
    sys.exit(f"shape {got_shape} != reference {ref_shape}")
diff = max(abs(a - b) for a, b in zip(got, ref))
scale = max(1.0, max(abs(b) for b in ref))
print(f"logits {got_shape}: max abs diff {diff:.3g} (scale {scale:.3g}, tolerance {tol:g})")
sys.exit(0 if diff <= tol * scale else 1)
