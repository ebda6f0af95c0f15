"""Photo reading: every kind of bad or unusual input gives a clear result."""
import io

import numpy as np
import pytest
from PIL import Image

from idguardian_jax import images


def _rgb(h=40, w=30, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _save(tmp_path, name, im, **kw):
    p = tmp_path / name
    im.save(p, **kw)
    return p


def _one_line_error(path, match, **kw):
    with pytest.raises(images.ImageReadError, match=match) as e:
        images.read_photo(path, **kw)
    msg = str(e.value)
    assert msg.startswith(str(path)) and "\n" not in msg
    return msg


def test_rgb_png_roundtrip(tmp_path):
    a = _rgb()
    p = _save(tmp_path, "a.png", Image.fromarray(a))
    ph = images.read_photo(p)
    assert np.array_equal(ph.rgb, a) and ph.alpha is None and ph.format == "PNG"


def test_missing_empty_folder_and_extension(tmp_path):
    _one_line_error(tmp_path / "nope.png", "no such file")
    (tmp_path / "empty.jpg").write_bytes(b"")
    _one_line_error(tmp_path / "empty.jpg", "empty")
    (tmp_path / "d.png").mkdir()
    _one_line_error(tmp_path / "d.png", "folder")
    (tmp_path / "notes.txt").write_text("hello")
    _one_line_error(tmp_path / "notes.txt", "unsupported file extension '.txt'")


def test_non_image_and_corrupt_and_truncated(tmp_path):
    (tmp_path / "text.jpg").write_text("this is not a JPEG")
    _one_line_error(tmp_path / "text.jpg", "not an image file")
    buf = io.BytesIO()
    Image.fromarray(_rgb(200, 200)).save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    _one_line_error(tmp_path / "trunc.jpg", "truncated|corrupt")
    buf = io.BytesIO()
    Image.fromarray(_rgb(64, 64)).save(buf, format="PNG")
    png = bytearray(buf.getvalue())
    png[60:80] = bytes(20)  # smash the image data chunk
    (tmp_path / "bad.png").write_bytes(bytes(png))
    _one_line_error(tmp_path / "bad.png", "corrupt|truncated|not an image")


def test_decompression_bomb_guard(tmp_path):
    p = _save(tmp_path, "big.png", Image.new("RGB", (300, 200)))
    _one_line_error(p, r"60,000 pixels exceeds the limit of 50,000", max_pixels=50_000)
    assert images.read_photo(p, max_pixels=60_000).rgb.shape == (200, 300, 3)


def test_grayscale_and_16bit(tmp_path):
    g = np.arange(256, dtype=np.uint8).reshape(16, 16)
    ph = images.read_photo(_save(tmp_path, "g.png", Image.fromarray(g, "L")))
    assert ph.rgb.shape == (16, 16, 3) and np.array_equal(ph.rgb[..., 1], g)
    g16 = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 257)
    ph = images.read_photo(_save(tmp_path, "g16.png", Image.fromarray(g16)))
    assert np.array_equal(ph.rgb[..., 0], g)
    assert any("8 bits" in n for n in ph.notes)


def test_cmyk_palette_rgba(tmp_path):
    a = _rgb(20, 20)
    ph = images.read_photo(_save(tmp_path, "c.jpg", Image.fromarray(a).convert("CMYK"), quality=95))
    assert ph.rgb.shape == (20, 20, 3) and ph.source_mode == "CMYK"
    pal = Image.fromarray(a).convert("P", palette=Image.ADAPTIVE, colors=16)
    ph = images.read_photo(_save(tmp_path, "p.png", pal))
    assert np.array_equal(ph.rgb, np.asarray(pal.convert("RGB")))
    rgba = np.dstack([a, np.full((20, 20), 128, np.uint8)])
    ph = images.read_photo(_save(tmp_path, "a.png", Image.fromarray(rgba, "RGBA")))
    assert np.array_equal(ph.rgb, a) and (ph.alpha == 128).all()


def test_animated(tmp_path):
    frames = [Image.fromarray(_rgb(10, 10, s)).convert("P") for s in range(3)]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:])
    _one_line_error(p, "animated image with 3 frames", allow_animated=False)
    ph = images.read_photo(p)
    assert ph.rgb.shape == (10, 10, 3) and "first of 3 frames" in ph.notes[0]


def test_exif_orientation_applied(tmp_path):
    a = _rgb(20, 40)
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 CW to display
    p = _save(tmp_path, "o.jpg", im, exif=exif.tobytes(), quality=100)
    ph = images.read_photo(p)
    assert ph.rgb.shape == (40, 20, 3)
    assert any("orientation 6" in n for n in ph.notes)
