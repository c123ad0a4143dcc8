"""The emulator's node table: real image work with ComfyUI's float32 arithmetic.

One ``NodeDef`` per class holds everything the server needs: the input spec (served by
``/object_info`` and checked by validation), the output types, whether it is an output
node, and a numpy function. ``IMAGE`` is float32 ``[batch, height, width, 3]`` in 0..1,
``MASK`` is float32 ``[batch, height, width]``, exactly as in ComfyUI, so saved pixels
match a real server's bit for bit where ComfyUI itself is exact (see comfyui_api.md §7).
To add a class, write its function and add one ``NodeDef`` to ``NODES``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from PIL import Image, ImageOps, ImageSequence
from PIL.PngImagePlugin import PngInfo

MAX_RESOLUTION = 16384
UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
CROP_METHODS = ["disabled", "center"]
BLEND_MODES = ["normal", "multiply", "screen", "overlay", "soft_light", "difference"]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
#: Stand-in for the list of input files in LoadImage's combo, resolved when served.
INPUT_FILES = "__input_files__"


@dataclass(frozen=True)
class Directories:
    """A server's folders, laid out like ``folder_paths.py`` under one base directory."""

    base: Path

    @property
    def input(self) -> Path:
        return self.base / "input"

    @property
    def output(self) -> Path:
        return self.base / "output"

    @property
    def temp(self) -> Path:
        return self.base / "temp"

    def by_type(self, kind: str | None) -> Path | None:
        """The folder for a ``type`` query value, or None when the type is unknown."""
        return {"input": self.input, "output": self.output, "temp": self.temp}.get(kind or "")

    def annotated(self, name: str) -> tuple[str, Path | None]:
        """Split ``name [input]`` / ``[output]`` / ``[temp]`` like ``folder_paths.annotated_filepath``."""
        for suffix, folder in ((" [output]", self.output), (" [input]", self.input), (" [temp]", self.temp)):
            if name.endswith(suffix[1:]):
                return name[: -len(suffix)], folder
        return name, None

    def annotated_path(self, name: str) -> Path:
        stripped, folder = self.annotated(name)
        return Path(os.path.join(folder or self.input, stripped))

    def input_files(self) -> list[str]:
        """Top-level image files of the input folder, as LoadImage's combo lists them."""
        names = [e.name for e in os.scandir(self.input) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)]
        return sorted(names)


@dataclass
class NodeContext:
    """What a node function may use besides its inputs (the hidden inputs of ComfyUI)."""

    dirs: Directories
    unique_id: str
    prompt: dict
    extra_pnginfo: dict | None
    send_text: Callable[[str, str], None]


@dataclass
class NodeResult:
    outputs: tuple = ()
    ui: dict | None = None


@dataclass(frozen=True)
class NodeDef:
    """One node class: its schema (as ``/object_info`` serves it) and its function."""

    name: str
    function: Callable[..., NodeResult]
    required: Mapping[str, tuple] = field(default_factory=dict)
    optional: Mapping[str, tuple] = field(default_factory=dict)
    hidden: Mapping[str, str] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()
    output_names: tuple[str, ...] | None = None
    output_node: bool = False
    category: str = "image"
    display_name: str | None = None
    description: str = ""
    python_module: str = "nodes"
    #: Inputs checked by the node's own VALIDATE_INPUTS instead of combo/min/max.
    validate: Callable[[Directories, dict], str | bool] | None = None
    validated_inputs: tuple[str, ...] = ()
    #: IS_CHANGED: extra cache-key material (LoadImage hashes its file).
    is_changed: Callable[[Directories, dict], Any] | None = None
    #: Written against comfy_api's V3 schema: /object_info adds api_node, deprecated,
    #: experimental and output_tooltips, and an unset display_name stays null.
    v3: bool = False

    def input_types(self, dirs: Directories | None = None) -> dict:
        """INPUT_TYPES(); with ``dirs`` the input-file combo is filled in, else left symbolic."""

        def resolve(spec: tuple) -> list:
            kind = spec[0]
            if kind == INPUT_FILES:
                kind = dirs.input_files() if dirs is not None else []
            return [kind, *spec[1:]]

        types: dict[str, dict] = {"required": {k: resolve(v) for k, v in self.required.items()}}
        if self.optional:
            types["optional"] = {k: resolve(v) for k, v in self.optional.items()}
        if self.hidden:
            types["hidden"] = dict(self.hidden)
        return types

    def info(self, dirs: Directories) -> dict:
        """The ``/object_info`` entry (``server.node_info``)."""
        types = self.input_types(dirs)
        display_name = self.display_name if self.display_name is not None or self.v3 else self.name
        info: dict[str, Any] = {
            "input": types,
            "input_order": {key: list(value) for key, value in types.items()},
            "output": list(self.outputs),
            "output_is_list": [False] * len(self.outputs),
            "output_name": list(self.output_names or self.outputs),
            "name": self.name,
            "display_name": display_name,
            "description": self.description,
            "python_module": self.python_module,
            "category": self.category,
            "output_node": self.output_node,
        }
        if self.v3:
            info.update(output_tooltips=[None] * len(self.outputs), deprecated=False, experimental=False,
                        api_node=False)
        return info

    def input_spec(self, name: str) -> tuple[str, tuple | None]:
        """(category, spec) of an input, like ``execution.get_input_info``."""
        if name in self.required:
            return "required", self.required[name]
        if name in self.optional:
            return "optional", self.optional[name]
        return "hidden", None


# --- arithmetic helpers (torch semantics in numpy) -------------------------------------


def _axis_weights(size_in: int, size_out: int, method: str) -> np.ndarray:
    """A (size_out, size_in) float32 matrix doing torch's 1-D ``interpolate`` for ``method``."""
    weights = np.zeros((size_out, size_in), dtype=np.float64)
    scale = size_in / size_out
    rows = np.arange(size_out)
    if method == "nearest-exact":
        src = np.minimum(np.floor((rows + 0.5) * scale).astype(np.int64), size_in - 1)
        weights[rows, src] = 1.0
    elif method == "bilinear":
        src = np.maximum(scale * (rows + 0.5) - 0.5, 0.0)
        i0 = np.floor(src).astype(np.int64)
        i1 = np.minimum(i0 + 1, size_in - 1)
        frac = src - i0
        np.add.at(weights, (rows, i0), 1.0 - frac)
        np.add.at(weights, (rows, i1), frac)
    elif method == "bicubic":
        a = -0.75
        src = scale * (rows + 0.5) - 0.5
        i0 = np.floor(src).astype(np.int64)
        t = src - i0

        def near(x: np.ndarray) -> np.ndarray:
            return ((a + 2) * x - (a + 3)) * x * x + 1

        def far(x: np.ndarray) -> np.ndarray:
            return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

        for offset, w in ((-1, far(t + 1)), (0, near(t)), (1, near(1 - t)), (2, far(2 - t))):
            np.add.at(weights, (rows, np.clip(i0 + offset, 0, size_in - 1)), w)
    elif method == "area":
        for row in rows:
            start = (row * size_in) // size_out
            end = -((-(row + 1) * size_in) // size_out)
            weights[row, start:end] = 1.0 / (end - start)
    else:
        raise ValueError(f"unknown upscale method {method!r}")
    return weights.astype(np.float32)


def common_upscale(image: np.ndarray, width: int, height: int, method: str, crop: str) -> np.ndarray:
    """``comfy.utils.common_upscale`` for a [B, H, W, C] image (centre crop first, then resize)."""
    if crop == "center":
        old_h, old_w = image.shape[1], image.shape[2]
        old_aspect = old_w / old_h
        new_aspect = width / height
        x = y = 0
        if old_aspect > new_aspect:
            x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
        image = image[:, y : old_h - y, x : old_w - x, :]
    if method == "lanczos":
        frames = []
        for frame in image:
            pil = Image.fromarray(np.clip(255.0 * frame, 0, 255).astype(np.uint8))
            pil = pil.resize((width, height), resample=Image.Resampling.LANCZOS)
            frames.append(np.asarray(pil).astype(np.float32) / 255.0)
        return np.stack(frames)
    wy = _axis_weights(image.shape[1], height, method)
    wx = _axis_weights(image.shape[2], width, method)
    out = np.einsum("oh,bhwc->bowc", wy, image, optimize=True)
    return np.einsum("pw,bowc->bopc", wx, out, optimize=True).astype(np.float32)


def _image_stats(image: np.ndarray) -> tuple[int, int]:
    return int(image.shape[2]), int(image.shape[1])


# --- node functions ------------------------------------------------------------------


def empty_image(ctx: NodeContext, width: int, height: int, batch_size: int, color: int) -> NodeResult:
    channels = [((color >> 16) & 0xFF) / 0xFF, ((color >> 8) & 0xFF) / 0xFF, (color & 0xFF) / 0xFF]
    image = np.empty((batch_size, height, width, 3), dtype=np.float32)
    image[...] = np.asarray(channels, dtype=np.float32)
    return NodeResult((image,))


def load_image(ctx: NodeContext, image: str) -> NodeResult:
    path = ctx.dirs.annotated_path(image)
    images, masks = [], []
    with Image.open(path) as img:
        size = None
        for frame in ImageSequence.Iterator(img):
            frame = ImageOps.exif_transpose(frame)
            if frame.mode == "I":
                frame = frame.point(lambda v: v * (1 / 255))
            rgb = frame.convert("RGB")
            if size is None:
                size = rgb.size
            if rgb.size != size:
                continue
            images.append(np.asarray(rgb).astype(np.float32) / 255.0)
            if "A" in frame.getbands():
                masks.append(1.0 - np.asarray(frame.getchannel("A")).astype(np.float32) / 255.0)
            elif frame.mode == "P" and "transparency" in frame.info:
                alpha = frame.convert("RGBA").getchannel("A")
                masks.append(1.0 - np.asarray(alpha).astype(np.float32) / 255.0)
            else:
                masks.append(np.zeros((64, 64), dtype=np.float32))
            if img.format == "MPO":
                break
    return NodeResult((np.stack(images), np.stack(masks)))


def _load_image_valid(dirs: Directories, inputs: dict) -> str | bool:
    if not dirs.input.is_dir():
        raise FileNotFoundError(f"[Errno 2] No such file or directory: '{dirs.input}'")
    if not os.path.exists(dirs.annotated_path(inputs["image"])):
        return "Invalid image file: {}".format(inputs["image"])
    return True


_HASHES: dict[tuple[str, int, int], str] = {}


def _load_image_changed(dirs: Directories, inputs: dict) -> str:
    """LoadImage.IS_CHANGED: the file's sha256 (memoised on path, mtime and size)."""
    path = dirs.annotated_path(inputs["image"])
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    digest = _HASHES.get(key)
    if digest is None:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if len(_HASHES) > 4096:
            _HASHES.clear()
        _HASHES[key] = digest
    return digest


def image_invert(ctx: NodeContext, image: np.ndarray) -> NodeResult:
    return NodeResult((1.0 - image,))


def image_blur(ctx: NodeContext, image: np.ndarray, blur_radius: int, sigma: float) -> NodeResult:
    if blur_radius == 0:
        return NodeResult((image,))
    _, height, width, _ = image.shape
    if blur_radius >= height or blur_radius >= width:
        raise RuntimeError(
            f"Argument #4: Padding size should be less than the corresponding input dimension, "
            f"but got: padding ({blur_radius}, {blur_radius}) at dimension 3 of input {list(image.shape)}"
        )
    size = blur_radius * 2 + 1
    axis = np.linspace(-1, 1, size, dtype=np.float32)
    x, y = np.meshgrid(axis, axis, indexing="ij")
    d = np.sqrt(x * x + y * y)
    kernel = np.exp(-(d * d) / np.float32(2.0 * sigma * sigma)).astype(np.float32)
    kernel = kernel / kernel.sum()
    r = blur_radius
    padded = np.pad(image, ((0, 0), (r, r), (r, r), (0, 0)), mode="reflect")
    out = np.zeros_like(image)
    for ky in range(size):
        rows = padded[:, ky : ky + height]
        for kx in range(size):
            out += kernel[ky, kx] * rows[:, :, kx : kx + width]
    return NodeResult((out,))


def image_scale(ctx: NodeContext, image: np.ndarray, upscale_method: str, width: int, height: int, crop: str) -> NodeResult:
    if width == 0 and height == 0:
        return NodeResult((image,))
    old_w, old_h = _image_stats(image)
    if width == 0:
        width = max(1, round(old_w * height / old_h))
    elif height == 0:
        height = max(1, round(old_h * width / old_w))
    return NodeResult((common_upscale(image, width, height, upscale_method, crop),))


def image_scale_by(ctx: NodeContext, image: np.ndarray, upscale_method: str, scale_by: float) -> NodeResult:
    old_w, old_h = _image_stats(image)
    width, height = round(old_w * scale_by), round(old_h * scale_by)
    return NodeResult((common_upscale(image, width, height, upscale_method, "disabled"),))


def _soft_light_g(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.25, ((16 * x - 12) * x + 4) * x, np.sqrt(x))


def image_blend(
    ctx: NodeContext, image1: np.ndarray, image2: np.ndarray, blend_factor: float, blend_mode: str
) -> NodeResult:
    if image1.shape != image2.shape:
        image2 = common_upscale(image2, image1.shape[2], image1.shape[1], "bicubic", "center")
    if blend_mode == "normal":
        blended = image2
    elif blend_mode == "multiply":
        blended = image1 * image2
    elif blend_mode == "screen":
        blended = 1 - (1 - image1) * (1 - image2)
    elif blend_mode == "overlay":
        blended = np.where(image1 <= 0.5, 2 * image1 * image2, 1 - 2 * (1 - image1) * (1 - image2))
    elif blend_mode == "soft_light":
        blended = np.where(
            image2 <= 0.5,
            image1 - (1 - 2 * image2) * image1 * (1 - image1),
            image1 + (2 * image2 - 1) * (_soft_light_g(image1) - image1),
        )
    elif blend_mode == "difference":
        blended = image1 - image2
    else:
        raise ValueError(f"Unsupported blend mode: {blend_mode}")
    factor = np.float32(blend_factor)
    result = image1 * (1 - factor) + blended * factor
    return NodeResult((np.clip(result, 0, 1).astype(np.float32),))


def image_crop(ctx: NodeContext, image: np.ndarray, width: int, height: int, x: int, y: int) -> NodeResult:
    x = min(x, image.shape[2] - 1)
    y = min(y, image.shape[1] - 1)
    return NodeResult((image[:, y : y + height, x : x + width, :],))


def image_add_noise(ctx: NodeContext, image: np.ndarray, seed: int, strength: float) -> NodeResult:
    """ImageAddNoise: clip(image + strength * N(0, 1), 0, 1), seeded.

    ComfyUI draws the noise with torch's generator, which numpy cannot reproduce, so the
    pixels are close in distribution, not identical; the same seed gives the same image.
    """
    noise = np.random.default_rng(seed).standard_normal(image.shape, dtype=np.float32)
    return NodeResult((np.clip(image + np.float32(strength) * noise, 0.0, 1.0).astype(np.float32),))


def get_image_size(ctx: NodeContext, image: np.ndarray) -> NodeResult:
    batch, height, width = int(image.shape[0]), int(image.shape[1]), int(image.shape[2])
    ctx.send_text(ctx.unique_id, f"width: {width}, height: {height}\n batch size: {batch}")
    return NodeResult((width, height, batch))


def image_to_mask(ctx: NodeContext, image: np.ndarray, channel: str) -> NodeResult:
    index = ["red", "green", "blue", "alpha"].index(channel)
    if index >= image.shape[-1]:
        raise IndexError(f"index {index} is out of bounds for dimension 3 with size {image.shape[-1]}")
    return NodeResult((image[:, :, :, index],))


def solid_mask(ctx: NodeContext, value: float, width: int, height: int) -> NodeResult:
    return NodeResult((np.full((1, height, width), value, dtype=np.float32),))


def mask_to_image(ctx: NodeContext, mask: np.ndarray) -> NodeResult:
    mask = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1]))
    return NodeResult((np.repeat(np.moveaxis(mask, 1, -1), 3, axis=-1),))


def preview_any(ctx: NodeContext, source: Any) -> NodeResult:
    """PreviewAny: show any value as text (JSON for containers, like comfy_extras.nodes_preview_any)."""
    text = json.dumps(source, indent=4) if isinstance(source, (dict, list)) else str(source)
    return NodeResult((), {"text": [text]})


def _prefix_vars(prefix: str, width: int, height: int) -> str:
    now = time.localtime()
    for token, value in (
        ("%width%", str(width)),
        ("%height%", str(height)),
        ("%year%", str(now.tm_year)),
        ("%month%", str(now.tm_mon).zfill(2)),
        ("%day%", str(now.tm_mday).zfill(2)),
        ("%hour%", str(now.tm_hour).zfill(2)),
        ("%minute%", str(now.tm_min).zfill(2)),
        ("%second%", str(now.tm_sec).zfill(2)),
    ):
        prefix = prefix.replace(token, value)
    return prefix


def get_save_image_path(prefix: str, output_dir: Path, width: int = 0, height: int = 0) -> tuple[str, str, int, str]:
    """``folder_paths.get_save_image_path``: (folder, filename, first counter, subfolder)."""
    root = os.path.abspath(output_dir)
    if "%" in prefix:
        prefix = _prefix_vars(prefix, width, height)
    subfolder = os.path.dirname(os.path.normpath(prefix))
    filename = os.path.basename(os.path.normpath(prefix))
    folder = os.path.join(root, subfolder)
    if os.path.commonpath((root, os.path.abspath(folder))) != root:
        raise Exception(
            "**** ERROR: Saving image outside the output folder is not allowed.\n"
            f" full_output_folder: {os.path.abspath(folder)}\n output_dir: {root}\n"
            f" commonpath: {os.path.commonpath((root, os.path.abspath(folder)))}"
        )
    prefix_len = len(filename)
    counters = []
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        os.makedirs(folder, exist_ok=True)
        names = []
    for name in names:
        head = name[: prefix_len + 1]
        if os.path.normcase(head[:-1]) != os.path.normcase(filename) or head[-1:] != "_":
            continue
        try:
            counters.append(int(name[prefix_len + 1 :].split("_")[0]))
        except ValueError:
            counters.append(0)
    counter = max(counters) + 1 if counters else 1
    return folder, filename, counter, subfolder


def _save_images(
    ctx: NodeContext, images: np.ndarray, prefix: str, folder_type: str, compress_level: int
) -> NodeResult:
    root = ctx.dirs.output if folder_type == "output" else ctx.dirs.temp
    width, height = _image_stats(images)
    folder, filename, counter, subfolder = get_save_image_path(prefix, root, width, height)
    metadata = PngInfo()
    metadata.add_text("prompt", json.dumps(ctx.prompt))
    for key, value in (ctx.extra_pnginfo or {}).items():
        metadata.add_text(key, json.dumps(value))
    results = []
    for batch_number, image in enumerate(images):
        pixels = np.clip(255.0 * image, 0, 255).astype(np.uint8)
        name = f"{filename.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
        Image.fromarray(pixels).save(os.path.join(folder, name), pnginfo=metadata, compress_level=compress_level)
        results.append({"filename": name, "subfolder": subfolder, "type": folder_type})
        counter += 1
    return NodeResult((), {"images": results})


def save_image(ctx: NodeContext, images: np.ndarray, filename_prefix: str) -> NodeResult:
    return _save_images(ctx, images, filename_prefix, "output", 4)


def preview_image(ctx: NodeContext, images: np.ndarray) -> NodeResult:
    letters = "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
    return _save_images(ctx, images, f"ComfyUI_temp_{letters}", "temp", 1)


def _int(default: int, lo: int, hi: int, step: int = 1) -> tuple:
    return ("INT", {"default": default, "min": lo, "max": hi, "step": step})


def _float(default: float, lo: float, hi: float, step: float) -> tuple:
    return ("FLOAT", {"default": default, "min": lo, "max": hi, "step": step})


_IMAGE = ("IMAGE",)

NODES: dict[str, NodeDef] = {
    node.name: node
    for node in (
        NodeDef(
            "EmptyImage",
            empty_image,
            required={
                "width": _int(512, 1, MAX_RESOLUTION),
                "height": _int(512, 1, MAX_RESOLUTION),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
                "color": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFF, "step": 1, "display": "color"}),
            },
            outputs=("IMAGE",),
        ),
        NodeDef(
            "LoadImage",
            load_image,
            required={"image": (INPUT_FILES, {"image_upload": True})},
            outputs=("IMAGE", "MASK"),
            display_name="Load Image",
            validate=_load_image_valid,
            validated_inputs=("image",),
            is_changed=_load_image_changed,
        ),
        NodeDef(
            "SaveImage",
            save_image,
            required={"images": ("IMAGE", {"tooltip": "The images to save."}), "filename_prefix": ("STRING", {
                "default": "ComfyUI", "tooltip": "The prefix for the file to save. This may include formatting information "
                "such as %date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes."})},
            hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
            output_node=True,
            display_name="Save Image",
            description="Saves the input images to your ComfyUI output directory.",
        ),
        NodeDef(
            "PreviewImage",
            preview_image,
            required={"images": _IMAGE},
            hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
            output_node=True,
            display_name="Preview Image",
            # PreviewImage subclasses SaveImage and inherits its DESCRIPTION.
            description="Saves the input images to your ComfyUI output directory.",
        ),
        NodeDef("ImageInvert", image_invert, required={"image": _IMAGE}, outputs=("IMAGE",), display_name="Invert Image"),
        NodeDef(
            "ImageBlur",
            image_blur,
            required={"image": ("IMAGE", {}), "blur_radius": _int(1, 1, 31), "sigma": _float(1.0, 0.1, 10.0, 0.1)},
            outputs=("IMAGE",),
            category="image/postprocessing",
            python_module="comfy_extras.nodes_post_processing",
            v3=True,
        ),
        NodeDef(
            "ImageScale",
            image_scale,
            required={
                "image": _IMAGE,
                "upscale_method": (UPSCALE_METHODS,),
                "width": _int(512, 0, MAX_RESOLUTION),
                "height": _int(512, 0, MAX_RESOLUTION),
                "crop": (CROP_METHODS,),
            },
            outputs=("IMAGE",),
            category="image/upscaling",
            display_name="Upscale Image",
        ),
        NodeDef(
            "ImageScaleBy",
            image_scale_by,
            required={"image": _IMAGE, "upscale_method": (UPSCALE_METHODS,), "scale_by": _float(1.0, 0.01, 8.0, 0.01)},
            outputs=("IMAGE",),
            category="image/upscaling",
            display_name="Upscale Image By",
        ),
        NodeDef(
            "ImageBlend",
            image_blend,
            required={
                "image1": ("IMAGE", {}),
                "image2": ("IMAGE", {}),
                "blend_factor": _float(0.5, 0.0, 1.0, 0.01),
                "blend_mode": ("COMBO", {"multiselect": False, "options": BLEND_MODES}),
            },
            outputs=("IMAGE",),
            category="image/postprocessing",
            python_module="comfy_extras.nodes_post_processing",
            v3=True,
        ),
        NodeDef(
            "ImageCrop",
            image_crop,
            required={
                "image": _IMAGE,
                "width": _int(512, 1, MAX_RESOLUTION),
                "height": _int(512, 1, MAX_RESOLUTION),
                "x": _int(0, 0, MAX_RESOLUTION),
                "y": _int(0, 0, MAX_RESOLUTION),
            },
            outputs=("IMAGE",),
            category="image/transform",
            display_name="Image Crop",
            python_module="comfy_extras.nodes_images",
        ),
        NodeDef(
            "ImageAddNoise",
            image_add_noise,
            required={
                "image": _IMAGE,
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                                 "tooltip": "The random seed used for creating the noise."}),
                "strength": _float(0.5, 0.0, 1.0, 0.01),
            },
            outputs=("IMAGE",),
            python_module="comfy_extras.nodes_images",
        ),
        NodeDef(
            "GetImageSize",
            get_image_size,
            required={"image": _IMAGE},
            hidden={"unique_id": "UNIQUE_ID"},
            outputs=("INT", "INT", "INT"),
            output_names=("width", "height", "batch_size"),
            display_name="Get Image Size",
            description="Returns width and height of the image, and passes it through unchanged.",
            python_module="comfy_extras.nodes_images",
        ),
        NodeDef(
            "PreviewAny",
            preview_any,
            required={"source": ("*", {})},
            output_node=True,
            category="utils",
            display_name="Preview Any",
            python_module="comfy_extras.nodes_preview_any",
        ),
        NodeDef(
            "ImageToMask",
            image_to_mask,
            required={"image": _IMAGE, "channel": (["red", "green", "blue", "alpha"],)},
            outputs=("MASK",),
            category="mask",
            display_name="Convert Image to Mask",
            python_module="comfy_extras.nodes_mask",
        ),
        NodeDef(
            "SolidMask",
            solid_mask,
            required={"value": _float(1.0, 0.0, 1.0, 0.01), "width": _int(512, 1, MAX_RESOLUTION), "height": _int(512, 1, MAX_RESOLUTION)},
            outputs=("MASK",),
            category="mask",
            python_module="comfy_extras.nodes_mask",
        ),
        NodeDef(
            "MaskToImage",
            mask_to_image,
            required={"mask": ("MASK",)},
            outputs=("IMAGE",),
            category="mask",
            display_name="Convert Mask to Image",
            python_module="comfy_extras.nodes_mask",
        ),
    )
}
