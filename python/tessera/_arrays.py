"""numpy arrays and CPU torch tensors in, the same kind out. torch is imported only when a
tensor is seen, so the package needs numpy alone."""

import sys

import numpy as np

DTYPES = ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
          "float32", "float64")


def is_tensor(x):
    """True when ``x`` is a torch tensor (without importing torch when it is not loaded)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def to_numpy(x, name):
    """``x`` as a C-contiguous numpy array of one of tessera's types, and whether it was a
    torch tensor. Tensors must be on the CPU; they share memory where they can."""
    tensor = is_tensor(x)
    if tensor:
        if x.device.type != "cpu":
            raise ValueError(f"{name}: a tensor on {x.device}; pass x.cpu() (tessera works on "
                             "host memory)")
        x = x.detach()
        if x.is_conj() if hasattr(x, "is_conj") else False:
            x = x.resolve_conj()
        x = x.numpy()
    elif not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array or a torch tensor, got "
                        f"{type(x).__name__}")
    if x.dtype.name not in DTYPES:
        raise TypeError(f"{name}: dtype {x.dtype} is not one of tessera's ("
                        f"{', '.join(DTYPES)}); convert it first, e.g. x.astype('float32')")
    if x.dtype.byteorder == ">":
        x = x.astype(x.dtype.newbyteorder("="))
    return np.ascontiguousarray(x), tensor


def like(array, tensor):
    """A result array as the caller's kind: a torch tensor (sharing memory) when the input was
    one."""
    if not tensor or array is None:
        return array
    import torch

    return torch.from_numpy(array)
