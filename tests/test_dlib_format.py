"""dlib serialization reader: primitives, the bundled files, and damaged files."""
import numpy as np
import pytest

from idguardian_jax.checkpoints import bundled, dlib_format, dlib_shape_predictor


def test_integer_encoding():
    r = dlib_format.Reader(bytes([0x01, 0x00, 0x02, 0x2c, 0x01, 0x81, 0x05]))
    assert r.int() == 0
    assert r.int() == 300
    assert r.int() == -5
    assert r.at_end()


def test_float_encoding_mantissa_first():
    # dlib writes 0.04f as mantissa 0x1ca3d70a (int64) then exponent -29 (int16).
    r = dlib_format.Reader(bytes.fromhex("030ad7a3811c"))
    assert np.float32(r.float()) == np.float32(0.04)


def test_bad_control_byte_names_offset():
    r = dlib_format.Reader(b"\x01\x00\x7f", "x.dat")
    r.int()
    with pytest.raises(dlib_format.DlibFormatError, match=r"x.dat: .*control byte 0x7f .* at byte offset 2"):
        r.int()


def test_bundled_resnet_structure():
    dnn = dlib_format.read_dnn(bundled.model_path(bundled.RESNET))
    assert dnn.loss.tag == "loss_metric_2"
    assert dnn.loss.fields["dist_thresh"] == pytest.approx(0.6)
    assert dnn.input.fields["rows"] == dnn.input.fields["cols"] == 150
    convs = [l for l in dnn.layers if l.kind == "con"]
    assert len(convs) == 29
    assert sum(1 for l in dnn.layers if l.kind == "affine") == 29


def test_bundled_detector_structure():
    dnn = dlib_format.read_dnn(bundled.model_path(bundled.DETECTOR))
    assert dnn.loss.tag == "loss_mmod_"
    assert dnn.loss.fields["detector_windows"][0]["width"] == 80
    assert dnn.input.tag.startswith("input_rgb_image_pyramid")
    kinds = [l.kind for l in dnn.layers]
    assert kinds.count("con") == 7 and kinds.count("affine") == 6
    # batch norm records were folded into affine layers with dlib's eps
    assert all(l.fields["converted_from_bn_eps"] == pytest.approx(1e-4)
               for l in dnn.layers if l.kind == "affine")


def _bundled_bytes(name):
    with open(bundled.model_path(name), "rb") as fh:
        return fh.read()


@pytest.mark.parametrize("cut", [1, 10, 300, 5000, -7])
def test_truncated_dnn_file(tmp_path, cut):
    data = _bundled_bytes(bundled.RESNET)
    path = tmp_path / "truncated.dat"
    path.write_bytes(data[:cut])
    with pytest.raises(dlib_format.DlibFormatError) as e:
        dlib_format.read_dnn(path)
    msg = str(e.value)
    assert str(path) in msg and "byte offset" in msg and "\n" not in msg


def test_empty_and_foreign_files(tmp_path):
    empty = tmp_path / "empty.dat"
    empty.write_bytes(b"")
    with pytest.raises(dlib_format.DlibFormatError, match="empty"):
        dlib_format.read_dnn(empty)
    png = tmp_path / "photo.dat"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    with pytest.raises(dlib_format.DlibFormatError, match=r"photo.dat: .*byte offset 0"):
        dlib_format.read_dnn(png)
    with pytest.raises(dlib_format.DlibFormatError, match=r"photo.dat"):
        dlib_shape_predictor.read_shape_predictor(png)


def test_garbled_layer_tag(tmp_path):
    data = bytearray(_bundled_bytes(bundled.RESNET))
    at = data.index(b"con_4")
    data[at:at + 5] = b"xyz_9"
    path = tmp_path / "garbled.dat"
    path.write_bytes(bytes(data))
    with pytest.raises(dlib_format.DlibFormatError, match=rf"unknown layer tag 'xyz_9' at byte offset {at - 2}"):
        dlib_format.read_dnn(path)


def test_detector_file_is_not_a_descriptor_network():
    from idguardian_jax.encoders import dlib_resnet
    with pytest.raises(dlib_format.DlibFormatError, match="not the dlib face recognition network"):
        dlib_resnet.load(bundled.model_path(bundled.DETECTOR), use_cache=False)


def test_truncated_shape_predictor(tmp_path):
    data = _bundled_bytes(bundled.SHAPE_PREDICTOR_5)
    path = tmp_path / "sp.dat"
    path.write_bytes(data[:len(data) // 3])
    with pytest.raises(dlib_format.DlibFormatError, match=r"sp.dat: .*file ends early.*byte offset"):
        dlib_shape_predictor.read_shape_predictor(path)
