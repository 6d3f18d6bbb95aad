"""Loading user images: one function, every input kind, one output: (H, W, 3) uint8 RGB.

:func:`load_image` accepts a path, raw bytes or a binary file object, a NumPy array or a PIL
image and always returns a C-contiguous ``(H, W, 3)`` ``uint8`` RGB array, upright:

* EXIF orientation is applied (phone photos come out upright);
* grey, palette, CMYK, YCbCr, 16-bit and float images are converted to 8-bit RGB (16-bit values
  are scaled, not clipped); an alpha channel is composited over white;
* a file whose header declares more than ``max_pixels`` pixels (default 100 Mpx, or
  ``$MORPHABLE_MAX_PIXELS``) is refused *before* its pixels are decoded (decompression bombs);
* empty, truncated, corrupt and non-image files and images smaller than :data:`MIN_SIDE` pixels
  raise :class:`morphable.errors.InputError` with a one-line message naming the file, the problem
  and the fix.

:func:`list_images` expands files and folders into the sorted list of image files to process.
"""
from __future__ import annotations

import io
import os
import struct
import threading
import warnings
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from morphable.errors import InputError

__all__ = ["EXAMPLE_PHOTO", "load_image", "list_images", "max_pixels_limit", "IMAGE_EXTENSIONS", "MIN_SIDE", "DEFAULT_MAX_PIXELS"]

#: Refuse images with more pixels than this unless raised (argument or ``$MORPHABLE_MAX_PIXELS``).
DEFAULT_MAX_PIXELS = 100_000_000
#: Smallest accepted image side in pixels: a face needs more than this to be fitted.
MIN_SIDE = 16
#: File name extensions (lower case) that :func:`list_images` picks up in folders.
#: a face photo shipped with the package (NASA's public-domain astronaut portrait, 512x512 JPEG):
#: what ``morphable fit --example`` fits
EXAMPLE_PHOTO = Path(__file__).resolve().parent / "examples" / "astronaut.jpg"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pnm")

ImageSource = Union[str, os.PathLike, bytes, bytearray, io.IOBase, np.ndarray, Image.Image]
_PIL_LIMIT_LOCK = threading.Lock()


def max_pixels_limit(max_pixels: Optional[int] = None) -> int:
    """The pixel limit in force: the argument, else ``$MORPHABLE_MAX_PIXELS``, else 100 Mpx."""
    if max_pixels is not None:
        value, where = max_pixels, "max_pixels"
    else:
        env = os.environ.get("MORPHABLE_MAX_PIXELS")
        if not env:
            return DEFAULT_MAX_PIXELS
        value, where = env, "MORPHABLE_MAX_PIXELS"
    try:
        limit = int(float(value))
    except (TypeError, ValueError):
        raise InputError(f"{where}={value!r} is not a number; give a pixel count such as 200000000") from None
    if limit <= 0:
        raise InputError(f"{where}={value!r} must be a positive pixel count, such as 200000000")
    return limit


def load_image(src: ImageSource, bgr: bool = False, max_pixels: Optional[int] = None,
               name: Optional[str] = None) -> np.ndarray:
    """Load an image as an upright (H, W, 3) uint8 RGB array.

    Args:
        src: a file path; raw encoded bytes or a binary file object; a NumPy array ((H, W, 3)
            uint8 RGB, (H, W) grey, (H, W, 1), (H, W, 4) RGBA; uint8, uint16 (scaled by 1/257;
            other integer arrays with values above 255 are taken as 16-bit), bool, or float in
            [0, 1] (values above 1 are taken as 0..255)); or a PIL image.
        bgr: the array's channels are in OpenCV's BGR(A) order (arrays only).
        max_pixels: refuse files whose header declares more pixels than this (default
            ``$MORPHABLE_MAX_PIXELS`` or 100 Mpx); checked before decoding.
        name: how to call the image in error messages (default: the path, or ``<array>``...).

    Returns:
        (H, W, 3) uint8 RGB, C-contiguous; EXIF orientation applied (files, bytes, PIL images).

    Raises:
        InputError: missing, empty, truncated, corrupt or non-image file, too many pixels,
            image smaller than :data:`MIN_SIDE`, or an array of an unsupported shape/dtype.
    """
    limit = max_pixels_limit(max_pixels)
    if isinstance(src, np.ndarray):
        out = _from_array(src, bgr, name or "<array>")
    elif isinstance(src, Image.Image):
        try:
            src = ImageOps.exif_transpose(src)  # no-op without an orientation tag
        except Exception:
            pass
        out = _from_pil(src, name or "<PIL image>")
    elif isinstance(src, (bytes, bytearray, memoryview)):
        out = _decode(io.BytesIO(bytes(src)), name or "<bytes>", limit, size=len(src))
    elif hasattr(src, "read"):
        out = _decode(src, name or getattr(src, "name", None) or "<file object>", limit, size=None)
    elif isinstance(src, (str, os.PathLike)):
        path = Path(src)
        label = name or str(path)
        if not path.exists():
            raise InputError(f"{label}: no such file; check the path")
        if path.is_dir():
            raise InputError(f"{label}: is a folder, not an image; pass image files, or the folder to `morphable fit`")
        try:
            size = path.stat().st_size
            with open(path, "rb") as fh:
                out = _decode(fh, label, limit, size=size)
        except PermissionError:
            raise InputError(f"{label}: permission denied; make the file readable") from None
    else:
        raise InputError(f"{name or type(src).__name__}: cannot load an image from a {type(src).__name__}; "
                         "pass a file path, bytes, a NumPy array or a PIL image")
    _check_size(out.shape[1], out.shape[0], name or _label(src))
    return out


def list_images(inputs: Iterable[Union[str, os.PathLike]], recursive: bool = False) -> list[Path]:
    """Expand files and folders into image paths.

    Files are kept as given (whatever their extension: a bad file is reported when loaded);
    folders contribute their files with an image extension (:data:`IMAGE_EXTENSIONS`, any case),
    sorted by name, hidden files skipped. Duplicates are dropped, first occurrence kept.
    """
    out: list[Path] = []
    seen: set = set()
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            it = p.rglob("*") if recursive else p.iterdir()
            found = sorted((q for q in it if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS
                            and not q.name.startswith(".")), key=lambda q: str(q))
        else:
            found = [p]
        for q in found:
            key = str(q.resolve()) if q.exists() else str(q)
            if key not in seen:
                seen.add(key)
                out.append(q)
    return out


# --------------------------------------------------------------------------- internals
def _label(src) -> str:
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    if isinstance(src, np.ndarray):
        return "<array>"
    if isinstance(src, Image.Image):
        return "<PIL image>"
    return getattr(src, "name", None) or "<bytes>"


def _check_size(w: int, h: int, label: str) -> None:
    if w < MIN_SIDE or h < MIN_SIDE:
        raise InputError(f"{label}: image is only {w}x{h} pixels; a face needs at least {MIN_SIDE}x{MIN_SIDE} "
                         "(use the original, larger photo)")


def _decode(fh, label: str, limit: int, size: Optional[int]) -> np.ndarray:
    if size == 0:
        raise InputError(f"{label}: file is empty (0 bytes); re-copy or re-download it")
    try:
        with _PIL_LIMIT_LOCK, warnings.catch_warnings():
            # PIL's own bomb check (warn above MAX_IMAGE_PIXELS, raise above twice it) is replaced
            # by ours, which runs on the header size right below, before any pixel is decoded.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            old = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                im = Image.open(fh)
            finally:
                Image.MAX_IMAGE_PIXELS = old
    except UnidentifiedImageError:
        raise InputError(f"{label}: not an image file, or a format Pillow cannot read; "
                         "convert it to JPEG or PNG") from None
    except Image.DecompressionBombError:
        raise InputError(f"{label}: image header declares too many pixels (over {limit:,}); if it is genuine, "
                         "raise the limit with --max-pixels or MORPHABLE_MAX_PIXELS") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise InputError(f"{label}: unreadable image header ({_one_line(e)}); the file is corrupt, re-export it") from None
    with im:
        w, h = im.size
        if w * h > limit:
            raise InputError(f"{label}: image is {w}x{h} = {w * h / 1e6:.0f} Mpx, over the limit of "
                             f"{limit / 1e6:g} Mpx (a decompression bomb guard); if the image is genuine, "
                             "raise it with --max-pixels or MORPHABLE_MAX_PIXELS, or downscale the image")
        _check_size(w, h, label)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im.load()
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as e:
            raise InputError(f"{label}: image data is truncated or corrupt ({_one_line(e)}); "
                             "re-export or re-download the file") from None
        except MemoryError:
            raise InputError(f"{label}: not enough memory to decode a {w}x{h} image; downscale it") from None
        try:
            im2 = ImageOps.exif_transpose(im)
        except Exception:  # a malformed EXIF block must not lose the image
            im2 = im
        return _from_pil(im2, label)


def _one_line(e: BaseException) -> str:
    s = " ".join(str(e).split()) or type(e).__name__
    return s if len(s) <= 120 else s[:117] + "..."


def _from_pil(im: Image.Image, label: str) -> np.ndarray:
    mode = im.mode
    try:
        if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
            a = np.asarray(im)
            return _from_array(a, False, label)
        if mode == "RGB":
            return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))
        if mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode == "P" and "transparency" in im.info):
            rgba = np.asarray(im.convert("RGBA"), dtype=np.uint8)
            return _composite(rgba)
        if mode == "L":
            g = np.asarray(im, dtype=np.uint8)
            return np.ascontiguousarray(np.repeat(g[:, :, None], 3, axis=2))
        return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))
    except (OSError, ValueError) as e:
        raise InputError(f"{label}: cannot convert a {mode!r} image to RGB ({_one_line(e)}); "
                         "convert it to an 8-bit RGB JPEG or PNG") from None


def _composite(rgba: np.ndarray) -> np.ndarray:
    """RGBA uint8 over a white background -> RGB uint8."""
    a = rgba[..., 3:4].astype(np.uint16)
    rgb = (rgba[..., :3].astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return np.ascontiguousarray(rgb.astype(np.uint8))


def _to_uint8(a: np.ndarray, label: str) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if a.dtype == np.uint16 or (a.dtype.kind in "iu" and a.size and a.max() > 255 and a.max() <= 65535 and a.min() >= 0):
        return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if a.dtype.kind in "iu":
        return np.clip(a, 0, 255).astype(np.uint8)
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise InputError(f"{label}: image array contains NaN or inf; clean it before fitting")
        scale = 255.0 if a.size and a.max() <= 1.0 else 1.0
        return np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
    raise InputError(f"{label}: image arrays of dtype {a.dtype} are not supported; use uint8 RGB")


def _from_array(a: np.ndarray, bgr: bool, label: str) -> np.ndarray:
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[2] not in (3, 4):
        raise InputError(f"{label}: array of shape {a.shape} looks channels-first; pass (H, W, 3), e.g. "
                         "a.transpose(1, 2, 0)")
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise InputError(f"{label}: image array must be (H, W), (H, W, 3) or (H, W, 4), got shape {a.shape}")
    _check_size(a.shape[1], a.shape[0], label)
    a = _to_uint8(a, label)
    if a.ndim == 2:
        return np.ascontiguousarray(np.repeat(a[:, :, None], 3, axis=2))
    if bgr:
        a = a[:, :, [2, 1, 0, 3]] if a.shape[2] == 4 else a[:, :, ::-1]
    if a.shape[2] == 4:
        return _composite(a)
    return np.ascontiguousarray(a)
