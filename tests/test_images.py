"""fitting.images: every input kind -> (H, W, 3) uint8 RGB upright; bad files -> one-line InputError."""
import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from fitting.images import MIN_SIDE, list_images, load_image, max_pixels_limit
from morphable.errors import InputError


def _jpeg_bytes(arr, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def _rgb(h=40, w=60):
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = (220, 30, 30)  # left half red
    a[:, w // 2:] = (30, 30, 220)  # right half blue
    return a


def _assert_rgb(a, shape=None):
    assert isinstance(a, np.ndarray) and a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
    assert a.flags["C_CONTIGUOUS"]
    if shape is not None:
        assert a.shape[:2] == shape


def _err(tmp_src, **kw) -> str:
    with pytest.raises(InputError) as ei:
        load_image(tmp_src, **kw)
    msg = str(ei.value)
    assert "\n" not in msg
    return msg


# ----------------------------------------------------------------------------- good inputs
def test_exif_rotated_jpeg_loads_upright(tmp_path):
    stored = _rgb(40, 60)  # 60 wide, 40 high, left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    p = tmp_path / "phone.jpg"
    p.write_bytes(_jpeg_bytes(stored, exif=exif))
    a = load_image(p)
    _assert_rgb(a, (60, 40))  # portrait after rotation
    assert (load_image(Image.open(p)) == a).all()  # the same for an opened PIL image
    # the stored left (red) half is on top after a 90-degree clockwise turn
    assert a[:25, :, 0].mean() > 180 and a[:25, :, 2].mean() < 80
    assert a[-25:, :, 2].mean() > 180 and a[-25:, :, 0].mean() < 80


def test_16bit_png_grey_and_rgb_are_scaled(tmp_path):
    g = np.array([[0, 257 * 128, 65535, 1000]], np.uint16).repeat(20, 0).repeat(5, 1)  # 20 x 20
    p = tmp_path / "g16.png"
    Image.fromarray(g).save(p)
    a = load_image(p)
    _assert_rgb(a, (20, 20))
    assert a[0, 0].tolist() == [0, 0, 0] and a[0, 5].tolist() == [128] * 3 and a[0, 10].tolist() == [255] * 3
    assert a[0, 15, 0] == 4  # 1000 / 257 -> 3.9 -> 4, not clipped to 255
    rgb16 = np.full((20, 20, 3), 0xABCD, np.uint16)
    rgb16[..., 0] = 0x1234  # OpenCV writes BGR: channel 0 is blue
    q = tmp_path / "rgb16.png"
    assert cv2.imwrite(str(q), rgb16)
    b = load_image(q)
    _assert_rgb(b, (20, 20))
    assert abs(int(b[0, 0, 2]) - 0x12) <= 1 and abs(int(b[0, 0, 0]) - 0xAB) <= 1


def test_cmyk_jpeg_grey_rgba_palette(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (32, 24), (0, 255, 255, 0)).save(p, "JPEG", quality=95)  # red in CMYK
    a = load_image(p)
    _assert_rgb(a, (24, 32))
    assert a[..., 0].mean() > 200 and a[..., 1].mean() < 60 and a[..., 2].mean() < 60

    p = tmp_path / "grey.png"
    Image.new("L", (30, 20), 77).save(p)
    a = load_image(p)
    _assert_rgb(a, (20, 30))
    assert (a == 77).all()

    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., :3] = (10, 200, 30)
    rgba[:10, :, 3] = 255  # top opaque, bottom transparent
    p = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(p)
    a = load_image(p)
    _assert_rgb(a, (20, 20))
    assert a[0, 0].tolist() == [10, 200, 30] and a[-1, 0].tolist() == [255, 255, 255]

    pal = Image.new("P", (20, 20), 1)
    pal.putpalette([0, 0, 0, 250, 10, 10] + [0] * 762)
    a = load_image(pal)
    _assert_rgb(a, (20, 20))
    assert a[0, 0].tolist() == [250, 10, 10]


def test_arrays_and_bytes():
    rgb = _rgb(20, 30)
    assert (load_image(rgb) == rgb).all()
    assert (load_image(np.ascontiguousarray(rgb[..., ::-1]), bgr=True) == rgb).all()
    assert load_image(rgb[..., 0]).shape == (20, 30, 3)  # grey (H, W)
    assert load_image(rgb[..., :1]).shape == (20, 30, 3)  # (H, W, 1)
    f = load_image(rgb.astype(np.float32) / 255.0)
    assert np.abs(f.astype(int) - rgb).max() <= 1
    u16 = load_image(rgb.astype(np.uint16) * 257)
    assert (u16 == rgb).all()
    bgra = np.dstack([rgb[..., ::-1], np.full((20, 30), 255, np.uint8)])
    assert (load_image(bgra, bgr=True) == rgb).all()
    assert load_image(_jpeg_bytes(rgb)).shape == (20, 30, 3)
    with pytest.raises(InputError, match="channels-first"):
        load_image(np.zeros((3, 40, 50), np.uint8))
    with pytest.raises(InputError, match="NaN"):
        load_image(np.full((20, 20, 3), np.nan, np.float32))
    with pytest.raises(InputError, match="shape"):
        load_image(np.zeros((20, 20, 5), np.uint8))


# ----------------------------------------------------------------------------- bad inputs
def test_truncated_empty_text_missing(tmp_path):
    good = _jpeg_bytes((np.random.default_rng(0).random((200, 200, 3)) * 255).astype(np.uint8))
    p = tmp_path / "cut.jpg"
    p.write_bytes(good[: len(good) // 2])
    msg = _err(p)
    assert str(p) in msg and "truncated" in msg and "re-" in msg

    p = tmp_path / "zero.png"
    p.write_bytes(b"")
    msg = _err(p)
    assert str(p) in msg and "empty" in msg

    p = tmp_path / "notes.jpg"
    p.write_text("this is not a picture\n" * 10)
    msg = _err(p)
    assert str(p) in msg and "not an image" in msg and "JPEG or PNG" in msg

    msg = _err(tmp_path / "nowhere.jpg")
    assert "no such file" in msg
    msg = _err(tmp_path)
    assert "folder" in msg


def _png_header(w: int, h: int) -> bytes:
    """A PNG with a valid signature and IHDR of size w x h, and a tiny bogus IDAT: header only."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def test_decompression_bomb_refused_before_decoding(tmp_path, monkeypatch):
    p = tmp_path / "bomb.png"
    p.write_bytes(_png_header(30000, 30000))  # 900 Mpx declared, ~100 bytes on disk
    msg = _err(p)
    assert str(p) in msg and "30000x30000" in msg and "--max-pixels" in msg and "MORPHABLE_MAX_PIXELS" in msg
    # the limit comes from the argument, else the environment
    small = tmp_path / "small.png"
    Image.new("RGB", (40, 40)).save(small)
    monkeypatch.setenv("MORPHABLE_MAX_PIXELS", "1000")
    assert max_pixels_limit() == 1000
    assert "over the limit" in _err(small)
    assert load_image(small, max_pixels=2000).shape == (40, 40, 3)
    monkeypatch.setenv("MORPHABLE_MAX_PIXELS", "lots")
    assert "not a number" in _err(small)


def test_too_small(tmp_path):
    p = tmp_path / "dot.png"
    Image.new("RGB", (1, 1)).save(p)
    msg = _err(p)
    assert "1x1" in msg and str(MIN_SIDE) in msg
    with pytest.raises(InputError, match="1x1"):
        load_image(np.zeros((1, 1, 3), np.uint8))


def test_list_images(tmp_path):
    for n in ["b.JPG", "a.png", "c.txt", ".hidden.jpg"]:
        (tmp_path / n).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.jpg").write_bytes(b"x")
    got = list_images([tmp_path, tmp_path / "a.png", tmp_path / "c.txt"])
    assert [p.name for p in got] == ["a.png", "b.JPG", "c.txt"]  # explicit files kept, no duplicates
    assert [p.name for p in list_images([tmp_path], recursive=True)] == ["a.png", "b.JPG", "d.jpg"]
