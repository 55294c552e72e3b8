"""Reader for the TTNS files written by oracle_dump (tests/oracle/tensor_file.h)."""
import struct

import numpy as np


def load(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"TTNS":
        raise ValueError(f"{path}: not a TTNS file")
    (count,), pos = struct.unpack_from("<I", data, 4), 8
    out = {}
    for _ in range(count):
        (n,) = struct.unpack_from("<I", data, pos); pos += 4
        name = data[pos:pos + n].decode(); pos += n
        dtype, ndim = struct.unpack_from("<II", data, pos); pos += 8
        dims = struct.unpack_from(f"<{ndim}q", data, pos); pos += 8 * ndim
        np_type = np.float32 if dtype == 0 else np.int32
        size = int(np.prod(dims)) if ndim else 1
        out[name] = np.frombuffer(data, np_type, size, pos).reshape(dims).copy()
        pos += 4 * size
    return out
