"""ComfyUI IMAGE batches <-> PNG files, with numpy only (the core never imports torch).

ComfyUI's IMAGE is ``[B, H, W, C]`` float32 in 0..1. The conversions copy ComfyUI's own:
``SaveImage`` writes ``clip(255 * x, 0, 255).astype(uint8)`` (truncating), ``LoadImage``
reads ``RGB / 255``; so a picture that goes out and back is the same to the last bit.
"""

from __future__ import annotations

import io
import os
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .errors import TransferError

log = logging.getLogger(__name__)


def frame_to_png(frame: np.ndarray) -> bytes:
    """One ``[H, W, C]`` float frame (C = 1, 3 or 4) as PNG bytes, the way SaveImage encodes it."""
    arr = np.asarray(frame)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an [H, W, C] image with 1, 3 or 4 channels, got shape {arr.shape}")
    pixels = np.clip(255.0 * arr.astype(np.float32), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=4)
    return out.getvalue()


def batch_to_pngs(batch: np.ndarray, folder: Path, stem: str) -> list[Path]:
    """Write each frame of a ``[B, H, W, C]`` batch to ``folder/stem_NNN.png`` (owner-only)."""
    arr = np.asarray(batch)
    if arr.ndim != 4:
        raise ValueError(f"expected an IMAGE batch [B, H, W, C], got shape {arr.shape}")
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths = []
    for index in range(arr.shape[0]):
        path = folder / f"{stem}_{index:03d}.png"
        data = frame_to_png(arr[index])
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        paths.append(path)
    return paths


def png_to_frame(path: Path) -> np.ndarray:
    """A PNG (or any image PIL reads) as an ``[H, W, 3]`` float32 frame, as LoadImage reads it."""
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
            return np.asarray(rgb, dtype=np.float32) / 255.0
    except OSError as err:
        raise TransferError(f"output {str(path)!r}: not a readable image ({err})") from err


def load_batch(paths: Sequence[Path]) -> np.ndarray:
    """The images at ``paths`` as one ``[B, H, W, 3]`` float32 batch; they must share a size."""
    if not paths:
        raise TransferError("the remote workflow saved no images")
    frames = [png_to_frame(p) for p in paths]
    first = frames[0].shape
    for path, frame in zip(paths, frames):
        if frame.shape != first:
            raise TransferError(f"output {str(path)!r} is {frame.shape[1]}x{frame.shape[0]}, but "
                                f"{str(paths[0])!r} is {first[1]}x{first[0]}: one IMAGE batch needs one size")
    return np.stack(frames).astype(np.float32, copy=False)
