#!/usr/bin/env python3
"""Prints, as a C array, the data.pkl that torch.save would write for a small Lightning-style checkpoint.

Torch is not needed: torch.save's pickle is CPython's pickle.Pickler at protocol 2 with a persistent_id
hook (torch/serialization.py, _save). Stand-in classes carry the same module and names as torch's, so
the pickler emits the same GLOBALs, BINPERSID tuples ('storage', torch.<T>Storage, key, 'cpu', numel),
_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, OrderedDict()) REDUCEs, and the
OrderedDict state dict whose _metadata attribute is restored by BUILD. The bytes are pasted into
test_ckpt.c (torch_like_pkl) so the C test does not depend on Python.

Checkpoint: {'epoch': 3, 'global_step': 70000, 'pytorch-lightning_version': '1.4.2',
             'state_dict': OrderedDict(w: f32 [2,3] storage '0', b: f16 [4] storage '1',
                                       w_t: f32 [3] view of storage '0' at offset 3, 'big': i64 [1] storage '2'),
             'callbacks': {ModelCheckpoint: {'best_model_score': numpy scalar f8, 'dirpath': '/x'}},
             'lr': 1.5e-4}
"""
import collections
import io
import pickle
import sys
import types


def module(name):
    m = types.ModuleType(name)
    sys.modules[name] = m
    return m


torch = module("torch")
utils = module("torch._utils")
np = module("numpy")
npcore = module("numpy.core")
npma = module("numpy.core.multiarray")
for n in ["pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"]:
    pl = module(n)


def fn(mod, name):
    def f(*a):
        raise RuntimeError("never called")
    f.__module__, f.__qualname__, f.__name__ = mod.__name__, name, name
    setattr(mod, name, f)
    return f


def cls(mod, name):
    c = type(name, (), {})
    c.__module__, c.__qualname__ = mod.__name__, name
    setattr(mod, name, c)
    return c


rebuild = fn(utils, "_rebuild_tensor_v2")
FloatStorage, HalfStorage, LongStorage = cls(torch, "FloatStorage"), cls(torch, "HalfStorage"), cls(torch, "LongStorage")
ModelCheckpoint = cls(pl, "ModelCheckpoint")
scalar = fn(npma, "scalar")


class dtype:
    def __init__(self, s):
        self.s = s

    def __reduce__(self):
        return (dtype, (self.s, False, True), (3, "<", None, None, None, -1, -1, 0))


dtype.__module__, dtype.__qualname__ = "numpy", "dtype"
np.dtype = dtype


class Scalar:
    def __reduce__(self):
        return (scalar, (dtype("f8"), b"\x00\x00\x00\x00\x00\x00\xf0?"))


class Storage:
    def __init__(self, kind, key, numel):
        self.kind, self.key, self.numel = kind, key, numel


class Tensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride)

    def __reduce_ex__(self, proto):
        s, o, size, stride = self.args
        return (rebuild, (s, o, size, stride, False, collections.OrderedDict()))


class TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.kind, obj.key, "cpu", obj.numel)
        return None


s0, s1, s2 = Storage(FloatStorage, "0", 6), Storage(HalfStorage, "1", 4), Storage(LongStorage, "2", 1)
sd = collections.OrderedDict()
sd["w"] = Tensor(s0, 0, (2, 3), (3, 1))
sd["b"] = Tensor(s1, 0, (4,), (1,))
sd["w_t"] = Tensor(s0, 3, (3,), (1,))
sd["big"] = Tensor(s2, 0, (1,), (1,))
sd._metadata = collections.OrderedDict([("", {"version": 1})])
ckpt = {"epoch": 3, "global_step": 70000, "pytorch-lightning_version": "1.4.2", "state_dict": sd,
        "callbacks": {ModelCheckpoint: {"best_model_score": Scalar(), "dirpath": "/x"}}, "lr": 1.5e-4}

buf = io.BytesIO()
TorchPickler(buf, protocol=2).dump(ckpt)
data = buf.getvalue()
print("/* %d bytes from tests/io/torchlike_pickle.py */" % len(data))
for i in range(0, len(data), 16):
    print("    " + ", ".join("0x%02x" % b for b in data[i:i + 16]) + ",")
