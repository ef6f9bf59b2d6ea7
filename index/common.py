"""Small helpers that index/, models/ and app/ share: files written whole, state-dict hashes, device choice.

index/ is the lowest layer (it imports neither models/ nor app/), so they live here. torch is imported
only by the helpers that need it: writing a file whole loads nothing.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Iterator, Mapping, Union

if TYPE_CHECKING:
    import torch

PathLike = Union[str, os.PathLike]


@contextmanager
def replaced_atomically(path: PathLike, durable: bool = False, mode: int = 0o666) -> Iterator[BinaryIO]:
    """A binary file to write `path`'s new content into: a temp file beside it that replaces `path` when the
    block ends, and is removed when it raises. Readers see the old file or the new one, never half of one.

    durable: fsync the file and then its directory, so the new content survives a power cut too.
    mode: the temp file's (so the result's) permission bits, before the umask.
    """
    path = Path(path)
    while True:
        temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as file:
            yield file
            if durable:
                file.flush()
                os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    if durable:
        directory = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def state_dict_sha256(state_dict: Mapping[str, "torch.Tensor"], with_layout: bool = False,
                      as_float32: bool = False) -> str:
    """SHA-256 (hex) of a state dict's tensors in name order: each name, then the tensor's bytes (C order, on CPU).

    The committed weight files carry hashes made by the variants below, so each stays exactly as it is:
    with_layout: "name|dtype|shape|" instead of the bare name (basic-pitch's weights_sha256, whatever the pickling);
    as_float32: the values as float32 bytes, whatever their dtype (the pitch student's weights_id).
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(state_dict.items()):
        tensor = tensor.detach().cpu()
        digest.update((f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|" if with_layout else name).encode())
        digest.update((tensor.float() if as_float32 else tensor).contiguous().numpy().tobytes())
    return digest.hexdigest()


class DeviceUnavailable(ValueError):
    """A device was asked for that this machine does not have."""


def choose_device(device: Union[str, "torch.device", None]) -> "torch.device":
    """None or "auto": CUDA when present, else the CPU; otherwise the device named, if this machine has it."""
    import torch

    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable(f"device {str(device)!r} requested but CUDA is not available; use 'cpu' or 'auto'")
    return device

