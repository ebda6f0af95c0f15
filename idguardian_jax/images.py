"""Reading photos: the only code that opens input images.

Every failure is an `ImageReadError` whose message is one line naming the file and what is wrong.
A photo is returned as 8-bit RGB (what every encoder and dlib see) plus what is needed to write a
faithful protected copy: the alpha channel, the ICC profile, EXIF and other metadata.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import warnings
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Extensions we read. Pillow can open more, but an explicit list gives a clear error for files
# that are not photos (e.g. a .txt or .json left in a dataset folder).
EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")

# Default decompression-bomb guard: 100 megapixels (a 12000 x 8000 photo is 96 MP). One float32
# copy of a 100 MP RGB photo is 1.2 GB; the protect loop holds several.
DEFAULT_MAX_PIXELS = 100_000_000


class ImageReadError(ValueError):
    """A photo that cannot be read; str(e) is one line: '<path>: <what is wrong>'."""


@dataclasses.dataclass
class Photo:
    """A decoded photo.

    rgb: (H, W, 3) uint8, EXIF orientation applied.
    alpha: (H, W) uint8 or None.
    source_mode: Pillow mode of the file (e.g. 'RGB', 'L', 'I;16', 'CMYK', 'P', 'RGBA').
    format: Pillow format name ('JPEG', 'PNG', ...).
    icc_profile, exif: raw bytes or None (EXIF with orientation reset to 1 when it was applied).
    info: other Pillow metadata (PNG text chunks, dpi, ...).
    notes: conversions made on read that the user should know about.
    """

    path: str
    rgb: np.ndarray
    alpha: np.ndarray | None = None
    source_mode: str = "RGB"
    format: str | None = None
    icc_profile: bytes | None = None
    exif: bytes | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


def is_image_path(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in EXTENSIONS


def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if mode.startswith("I;16") or arr.dtype == np.uint16:
        return (arr.astype(np.uint32) * 255 + 32767) // 65535
    if mode == "I":  # 32-bit integer images (Pillow opens 16-bit PNGs as 'I'): assume 16-bit range
        a = np.clip(arr.astype(np.int64), 0, 65535)
        return ((a * 255 + 32767) // 65535).astype(np.uint8)
    if mode == "F":
        return np.clip(np.round(arr * 255.0 if arr.max() <= 1.0 else arr), 0, 255).astype(np.uint8)
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    raise ValueError(f"unsupported pixel type {arr.dtype} (mode {mode})")


def read_photo(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS,
               allow_animated: bool = True, apply_exif_orientation: bool = True) -> Photo:
    """Read a photo file into 8-bit RGB (+ alpha and metadata).

    Raises ImageReadError (one line, naming the file) for a missing, empty, unreadable, truncated,
    non-image, too large or (with allow_animated=False) animated file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        try:
            os.stat(path)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise ImageReadError(f"{path}: a symbolic link loop (too many levels of "
                                     f"symbolic links)") from None
            if e.errno in (errno.EACCES, errno.EPERM):
                raise ImageReadError(f"{path}: permission denied") from None
        if os.path.islink(path):
            raise ImageReadError(f"{path}: a broken symbolic link (to {os.readlink(path)})")
        raise ImageReadError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ImageReadError(f"{path}: is a folder, not an image file")
    ext = os.path.splitext(path)[1].lower()
    if ext not in EXTENSIONS:
        raise ImageReadError(f"{path}: unsupported file extension {ext or '(none)'!r}; "
                             f"expected one of {', '.join(EXTENSIONS)}")
    if os.path.getsize(path) == 0:
        raise ImageReadError(f"{path}: the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageReadError(
                    f"{path}: {w}x{h} = {w * h:,} pixels exceeds the limit of {max_pixels:,} "
                    f"(decompression-bomb guard; raise it with --max_pixels)")
            if w < 1 or h < 1:
                raise ImageReadError(f"{path}: the image has no pixels ({w}x{h})")
            n_frames = getattr(im, "n_frames", 1)
            if n_frames > 1 and not allow_animated:
                raise ImageReadError(f"{path}: animated image with {n_frames} frames is not "
                                     f"supported (protecting one frame would drop the others)")
            fmt = im.format
            source_mode = im.mode
            info = dict(im.info)
            im.load()
            notes = []
            if n_frames > 1:
                notes.append(f"animated image: only the first of {n_frames} frames was read")
            if apply_exif_orientation:
                orientation = im.getexif().get(0x0112, 1)
                if orientation not in (1, None):
                    im = ImageOps.exif_transpose(im)
                    notes.append(f"EXIF orientation {orientation} applied")
            exif = im.getexif()
            exif_bytes = exif.tobytes() if len(exif) else None
            icc = info.pop("icc_profile", None)
            info.pop("exif", None)
            rgb, alpha = _convert(im, path, icc, notes)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"{path}: too many pixels for Pillow's decompression-bomb guard "
                             f"({e})") from None
    except Image.DecompressionBombWarning:
        raise ImageReadError(f"{path}: image size exceeds Pillow's decompression-bomb limit") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image file (or an image format Pillow cannot "
                             f"read)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "truncated" in msg.lower() or isinstance(e, EOFError):
            raise ImageReadError(f"{path}: the image file is truncated ({msg})") from None
        raise ImageReadError(f"{path}: the image data is corrupt ({msg})") from None
    return Photo(path=path, rgb=rgb, alpha=alpha, source_mode=source_mode, format=fmt,
                 icc_profile=icc, exif=exif_bytes, info=info, notes=notes)


def _convert(im: Image.Image, path: str, icc: bytes | None, notes: list[str]):
    """Pillow image of any mode -> (uint8 RGB, uint8 alpha or None)."""
    mode = im.mode
    alpha = None
    if mode == "P":
        has_alpha = "transparency" in im.info or im.palette is not None and im.palette.mode == "RGBA"
        im = im.convert("RGBA" if has_alpha else "RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        alpha = np.asarray(im.getchannel("A"))
        im = im.convert("RGB") if mode != "LA" else im.getchannel(0)
        mode = im.mode
        if alpha.min() == 255:
            alpha_note = "alpha channel is fully opaque"
        else:
            alpha_note = "alpha channel kept for the output"
        notes.append(alpha_note)
    if mode == "CMYK":
        im = im.convert("RGB")
        notes.append("CMYK converted to RGB")
        mode = "RGB"
    if mode in ("RGB",):
        rgb = np.asarray(im, dtype=np.uint8)
    elif mode in ("L", "1", "I", "F") or mode.startswith("I;16"):
        arr = np.asarray(im)
        gray = _to_uint8(arr, mode)
        if mode not in ("L", "1"):
            notes.append(f"{mode} samples reduced to 8 bits")
        rgb = np.repeat(gray[..., None], 3, axis=2).astype(np.uint8)
    elif mode in ("YCbCr", "LAB", "HSV"):
        rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    elif mode in ("RGBX",):
        rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    else:
        try:
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
            notes.append(f"mode {mode} converted to RGB")
        except (ValueError, OSError):
            raise ImageReadError(f"{path}: unsupported image mode {mode}") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageReadError(f"{path}: could not convert mode {im.mode} to RGB")
    if alpha is not None and alpha.dtype != np.uint8:
        alpha = _to_uint8(alpha, "I;16")
    return np.ascontiguousarray(rgb), alpha


# ------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------
OUTPUT_FORMATS = {"png": ("PNG", ".png"), "jpeg": ("JPEG", ".jpg"), "webp": ("WEBP", ".webp")}
LOSSY_WARNING = ("lossy {fmt} output weakens the protection: compression removes part of the "
                 "perturbation (use PNG unless you must)")


class ImageWriteError(OSError):
    """An output that cannot be written; str(e) is one line naming the file."""


# Temporary files of atomic writes: this name pattern is the tool's own; stale ones (a write cut
# short by a crash) are removed only in the folders a job writes (writer.JobDir).
TMP_PREFIX = ".idguardian-tmp-"


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once at import (os.umask can only be read by setting it, which is not thread-safe).
UMASK = _read_umask()


def apply_umask(path: str) -> None:
    """Give a file made by mkstemp (mode 0600) the mode an ordinary open() would: 0666 & ~umask."""
    os.chmod(path, 0o666 & ~UMASK)


# EXIF tags that say where a photo was taken: the GPS IFD pointer (its whole sub-directory of
# latitude, longitude, altitude, time, direction...). Dropped from outputs by default
# (--config.output.keep_location=true keeps them); orientation and colour profile stay.
LOCATION_EXIF_TAGS = (0x8825,)  # GPSInfo
_XMP_LOCATION = ("exif:GPS", "photoshop:City", "photoshop:State", "photoshop:Country",
                 "Iptc4xmpCore:Location", "Iptc4xmpExt:LocationShown", "Iptc4xmpExt:LocationCreated")


def drop_location(exif: bytes | None) -> bytes | None:
    """EXIF bytes without the GPS IFD (None when nothing is left or none was given)."""
    if not exif:
        return exif
    e = Image.Exif()
    e.load(exif)
    for tag in LOCATION_EXIF_TAGS:
        if tag in e:
            del e[tag]
    return e.tobytes() if len(e) else None


def has_location_text(value: str) -> bool:
    """Whether a text chunk (e.g. an XMP packet) names a place or GPS position."""
    return any(k in value for k in _XMP_LOCATION)


def output_extension(fmt: str) -> str:
    return OUTPUT_FORMATS[fmt][1]


def write_photo(path: str | os.PathLike, rgb: np.ndarray, source: Photo | None = None,
                fmt: str = "png", strip_metadata: bool = False, quality: int = 95,
                extra_text: dict[str, str] | None = None, keep_location: bool = False) -> str:
    """Write an RGB uint8 photo atomically (temporary file in the same folder, then rename).

    With a source Photo, its alpha channel is always carried over, and unless strip_metadata its
    ICC profile (not a CMYK one: the pixels are now RGB), EXIF and PNG text chunks too; without
    keep_location, the EXIF GPS data and text chunks naming a place (XMP) are dropped.
    extra_text: PNG text chunks to add (PNG only). The file gets mode 0666 & ~umask.
    Returns the path written.
    """
    import tempfile

    from PIL import PngImagePlugin

    path = os.fspath(path)
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; expected one of {', '.join(OUTPUT_FORMATS)}")
    pil_format = OUTPUT_FORMATS[fmt][0]
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    im = Image.fromarray(rgb, "RGB")
    if source is not None and source.alpha is not None:
        im.putalpha(Image.fromarray(source.alpha, "L"))
    kwargs: dict[str, Any] = {}
    if source is not None and not strip_metadata:
        if source.icc_profile and source.source_mode != "CMYK":
            kwargs["icc_profile"] = source.icc_profile
        exif = source.exif if keep_location else drop_location(source.exif)
        if exif:
            kwargs["exif"] = exif
        if "dpi" in source.info:
            kwargs["dpi"] = source.info["dpi"]
    if pil_format == "PNG":
        text = PngImagePlugin.PngInfo()
        if source is not None and not strip_metadata:
            for k, v in source.info.items():
                if isinstance(k, str) and isinstance(v, str) and (
                        keep_location or not has_location_text(v)):
                    text.add_text(k, v)
        for k, v in (extra_text or {}).items():
            text.add_text(k, v)
        kwargs["pnginfo"] = text
    else:
        kwargs["quality"] = quality
        if pil_format == "JPEG" and im.mode == "RGBA":
            raise ImageWriteError(f"{path}: JPEG cannot keep the photo's alpha channel; "
                                  f"use PNG or WebP")
    folder = os.path.dirname(os.path.abspath(path)) or "."
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=TMP_PREFIX, suffix=os.path.splitext(path)[1])
    except OSError as e:
        raise ImageWriteError(f"{path}: cannot write there ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            im.save(fh, format=pil_format, **kwargs)
            fh.flush()
            os.fsync(fh.fileno())
        apply_umask(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise ImageWriteError(f"{path}: cannot write ({e.strerror or e})") from None
        raise
    return path


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of two uint8 photos of one shape; summed exactly in row blocks (int64), so memory
    stays small for large photos (a float64 copy of a 6000x6000 photo is 864 MB)."""
    rows = max(1, (1 << 22) // max(1, int(np.prod(a.shape[1:]))))
    total = 0
    for r in range(0, a.shape[0], rows):
        d = a[r:r + rows].astype(np.int32) - b[r:r + rows].astype(np.int32)
        total += int(np.dot(d.ravel().astype(np.int64), d.ravel().astype(np.int64)))
    mse = total / float(max(1, a.size))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)
