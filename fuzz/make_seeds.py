#!/usr/bin/env python3
"""Writes small seed inputs for the fuzz targets: make_seeds.py OUTDIR -> OUTDIR/{safetensors,ckpt,shard_index}/.

ckpt seeds wrap the torch-like pickle from tests/io/torchlike_pickle.py (CPython's pickler configured as
torch.save) in zips the way torch writes them (STORED, 64-byte aligned), plus deflated and zip64 variants."""
import json
import os
import re
import struct
import subprocess
import sys
import zipfile

out = sys.argv[1]
here = os.path.dirname(os.path.abspath(__file__))
os.makedirs(f"{out}/safetensors", exist_ok=True)
os.makedirs(f"{out}/ckpt", exist_ok=True)


def safetensors(hdr, data):
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


seeds = {
    "one": safetensors({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),
    "meta": safetensors({"__metadata__": {"k": "v"}, "x": {"dtype": "F16", "shape": [1, 2], "data_offsets": [0, 4]},
                         "y": {"dtype": "BF16", "shape": [], "data_offsets": [4, 6]}}, b"\1" * 6),
    "empty": safetensors({}, b""),
    "ints": safetensors({"i": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]},
                         "u": {"dtype": "U8", "shape": [3], "data_offsets": [8, 11]}}, b"\2" * 11),
}
for k, v in seeds.items():
    open(f"{out}/safetensors/{k}", "wb").write(v)

src = subprocess.run([sys.executable, f"{here}/../tests/io/torchlike_pickle.py"], capture_output=True, text=True, check=True).stdout
pkl = bytes(int(x, 16) for x in re.findall(r"0x([0-9a-f]{2})", src.split("*/", 1)[1]))
storages = {"0": struct.pack("<6f", 1, 2, 3, 4, 5, 6), "1": b"\x00\x3c" * 4, "2": struct.pack("<q", 7)}


def ckpt(path, compress, force_zip64=False):
    with zipfile.ZipFile(path, "w", compress) as z:
        entries = [("archive/data.pkl", pkl), ("archive/byteorder", b"little")]
        entries += [(f"archive/data/{k}", v) for k, v in storages.items()] + [("archive/version", b"3\n")]
        for name, data in entries:
            zi = zipfile.ZipInfo(name)
            zi.compress_type = compress
            with z.open(zi, "w", force_zip64=force_zip64) as f:
                f.write(data)


ckpt(f"{out}/ckpt/stored", zipfile.ZIP_STORED)
ckpt(f"{out}/ckpt/deflated", zipfile.ZIP_DEFLATED)
ckpt(f"{out}/ckpt/zip64", zipfile.ZIP_STORED, force_zip64=True)
# shard indexes (fuzz_shard_index): as save_pretrained(max_shard_size=...) writes them, and near misses
os.makedirs(f"{out}/shard_index", exist_ok=True)
shard = "diffusion_pytorch_model-%05d-of-00002.safetensors"
indexes = {
    "unet": {"metadata": {"total_size": 3438167536},
             "weight_map": {"conv_in.bias": shard % 1, "conv_in.weight": shard % 1, "up_blocks.0.resnets.0.conv1.weight": shard % 2}},
    "fp16": {"metadata": {}, "weight_map": {"a": "model.fp16-00001-of-00001.safetensors"}},
    "plain": {"weight_map": {"x": "a.safetensors", "y": "b.safetensors"}},
    "gap": {"weight_map": {"x": "m-00001-of-00003.safetensors", "y": "m-00003-of-00003.safetensors"}},
    "path": {"weight_map": {"x": "../m.safetensors"}},
}
for k, v in indexes.items():
    open(f"{out}/shard_index/{k}", "w").write(json.dumps(v, indent=2))
print("seeds in", out)
