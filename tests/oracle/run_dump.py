"""Runs oracle_dump and loads what it wrote."""
import os
import subprocess
import tempfile

import tensor_file


def dump(binary, mode, **kw):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "dump.bin")
        args = [binary, *mode.split()] + [f"{k}={v}" for k, v in kw.items()] + [f"out={out}"]
        subprocess.run(args, check=True)
        return tensor_file.load(out)
