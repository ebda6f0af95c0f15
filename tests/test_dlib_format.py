"""dlib serialization reader: primitives, the bundled files, and damaged files."""
import math

import numpy as np
import pytest

from idguardian_jax.checkpoints import bundled, dlib_format, dlib_runs, dlib_shape_predictor


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


# -- bulk decoders (Reader.scan / ints / floats): the scalar decoders' values and errors ---------
def _enc_int(v, size=None):
    """dlib's integer encoding; size: magnitude bytes (default: as few as hold it, at least 1)."""
    m = abs(v)
    size = size or max(1, (m.bit_length() + 7) // 8)
    return bytes([(0x80 if v < 0 else 0) | size]) + m.to_bytes(size, "little")


def _enc_float(x):
    """A float64 as dlib writes it: an integer mantissa, then an exponent (exact)."""
    m, e = math.frexp(x)
    return _enc_int(int(m * 2**53)) + _enc_int(e - 53)


def _random_ints(rng, n):
    """n integers of every length (8-byte ones up to +-(2**63 - 1), and -2**63), a few written with
    more magnitude bytes than needed."""
    bits = rng.integers(0, 64, n)
    vals = [int(rng.integers(0, 2**62)) >> (62 - min(int(b), 62)) for b in bits]
    vals = [v * 2 + 1 if b == 63 else v for v, b in zip(vals, bits)]  # up to 2**63 - 1
    vals = [-v if s else v for v, s in zip(vals, rng.random(n) < 0.4)]
    vals[n // 3] = -2**63
    sizes = [int(rng.integers(max(1, (abs(v).bit_length() + 7) // 8), 9)) if p else None
             for v, p in zip(vals, rng.random(n) < 0.1)]
    return vals, b"".join(_enc_int(v, s) for v, s in zip(vals, sizes))


def _outcome(fn):
    """("ok", fn()) or (the exception's type name, its message)."""
    try:
        return "ok", fn()
    except Exception as e:  # noqa: BLE001 -- the comparison is the point
        return type(e).__name__, str(e)


@pytest.mark.parametrize("n", [0, 1, 7, 300, 5000])
def test_bulk_ints_match_scalar(n):
    rng = np.random.default_rng(n)
    vals, data = _random_ints(rng, max(n, 1))
    data += b"\x01\x05"  # something after the run
    r, s = dlib_format.Reader(data), dlib_format.Reader(data)
    got = r.ints(n)
    assert got.dtype == np.int64 and got.shape == (n,)
    assert got.tolist() == [s.int() for _ in range(n)] == vals[:n]
    assert r.pos == s.pos


def test_bulk_floats_match_scalar_bit_for_bit():
    rng = np.random.default_rng(3)
    n = 6000
    mant = [int(v) for v in rng.integers(-2**63 + 1, 2**63, n)]      # > 53 bits: rounded
    mant[::3] = [int(v) for v in rng.integers(-2**24, 2**24, len(mant[::3]))]
    exps = [int(v) for v in rng.integers(-120, 60, n)]
    exps[1::97] = [-1100] * len(exps[1::97])                          # subnormal or zero
    for i in range(2, n, 101):
        exps[i] = 32000 + i % 3                                       # +inf, -inf, nan
    exps[5] = -32768
    mant[9] = 0
    data = b"".join(_enc_int(m) + _enc_int(e) for m, e in zip(mant, exps))
    r, s = dlib_format.Reader(data), dlib_format.Reader(data)
    got = r.floats(n)
    ref = np.array([s.float() for _ in range(n)], np.float64)
    assert got.dtype == np.float64 and r.pos == s.pos == len(data)
    assert np.array_equal(got.view(np.uint64), ref.view(np.uint64))
    assert np.isinf(got).sum() > 0 and np.isnan(got).sum() > 0 and (got == 0).sum() > 0


def test_bulk_floats_beyond_int64_and_overflow_as_scalar():
    # 8-byte mantissas of 2**63 and more (not int64): decoded as Python ints by the scalar reader
    mant = [2**64 - 1, -(2**63 + 5), 2**63, 12345]
    data = b"".join(_enc_int(m) + _enc_int(-70) for m in mant) * 600
    got = dlib_format.Reader(data).floats(2400)
    assert got[:4].tolist() == [math.ldexp(float(m), -70) for m in mant]
    # math.ldexp overflowing raises OverflowError, bulk or not
    data = (_enc_int(1) + _enc_int(3)) * 3000 + _enc_int(3) + _enc_int(31999)
    with pytest.raises(OverflowError):
        dlib_format.Reader(data).floats(3001)


@pytest.mark.parametrize("count", [40, 4000])
@pytest.mark.parametrize("damage", ["truncate", "control 0x7f", "control 0x00", "control 0x09",
                                    "ascii float", "exponent range"])
def test_bulk_errors_match_scalar(count, damage):
    """A damaged run raises the scalar decoders' DlibFormatError: same message, same byte offset."""
    rng = np.random.default_rng(count)
    pairs = [(int(m), int(e)) for m, e in zip(rng.integers(-2**30, 2**30, count),
                                              rng.integers(-60, 10, count))]
    k = count * 2 // 3
    if damage == "exponent range":
        pairs[k] = (5, -40000)
    chunks = [_enc_int(m) + _enc_int(e) for m, e in pairs]
    at = sum(map(len, chunks[:k]))
    data = bytearray(b"".join(chunks))
    if damage == "truncate":
        data = data[:at + 2]
    elif damage.startswith("control"):
        data[at] = int(damage.split()[1], 16)
    elif damage == "ascii float":
        data[at] = ord("3")
    for bulk, scalar in [(lambda r: r.floats(count, "a leaf"),
                          lambda r: [r.float("a leaf") for _ in range(count)]),
                         (lambda r: r.ints(2 * count, "an index"),
                          lambda r: [r.int("an index") for _ in range(2 * count)])]:
        want = _outcome(lambda: scalar(dlib_format.Reader(bytes(data), "d.dat")))
        got = _outcome(lambda: bulk(dlib_format.Reader(bytes(data), "d.dat")))
        if want[0] == "ok":  # e.g. an exponent out of range is just an integer to `int`
            assert got[0] == "ok" and list(got[1]) == want[1]
            continue
        assert got == want
        assert want[0] == "DlibFormatError" and "d.dat: " in want[1]
        assert f"byte offset {at}" in want[1] or damage == "truncate"


def test_bulk_ints_outside_int64():
    data = _enc_int(7) * 3000 + _enc_int(2**63) + _enc_int(1)
    r = dlib_format.Reader(data, "big.dat")
    msg = (r"big.dat: .*integer 9223372036854775808 outside int64"
           r" while reading x at byte offset 6000")
    with pytest.raises(dlib_format.DlibFormatError, match=msg):
        r.ints(3002, "x")


@pytest.mark.parametrize("block_len", [16, 100, 2048])
def test_lane_chain_matches_a_walk(block_len):
    """The vectorized chain walk, on random steps and on patterns whose chains never merge."""
    rng = np.random.default_rng(block_len)
    cases = [rng.integers(1, 10, 20000), np.full(9001, 2), np.resize([3, 1, 5], 7777),
             np.resize([9, 2], 5000), rng.integers(1, 10, 5), np.full(3, 9)]
    for st in cases:
        steps = np.concatenate([st.astype(np.uint8), np.zeros(9, np.uint8)])
        q, ref = 0, []
        while q < len(st):
            ref.append(q)
            q += int(st[q])
        assert dlib_runs.lane_chain(steps, block_len).tolist() == ref


# -- shape predictors: the bulk path gives what the value-by-value path gives ---------------------
def _shape_predictor_bytes(rng, parts=5, cascades=2, trees=24, depth=3, feats=30, depths=None):
    out = [_enc_int(1), _enc_int(-2 * parts), _enc_int(-1)]
    out += [_enc_float(x) for x in rng.random(2 * parts)]
    out.append(_enc_int(cascades))
    for c in range(cascades):
        out.append(_enc_int(trees))
        for t in range(trees):
            n_splits = 2 ** (depths[t] if depths else depth) - 1
            out.append(_enc_int(n_splits))
            for _ in range(n_splits):
                out += [_enc_int(int(rng.integers(feats))), _enc_int(int(rng.integers(feats))),
                        _enc_float(float(rng.normal()))]
            out.append(_enc_int(n_splits + 1))
            for _ in range(n_splits + 1):
                out += [_enc_int(-2 * parts), _enc_int(-1)]
                out += [_enc_float(x) for x in rng.normal(size=2 * parts) * 0.1]
    for kind in ("anchors", "deltas"):
        out.append(_enc_int(cascades))
        for _ in range(cascades):
            out.append(_enc_int(feats))
            if kind == "anchors":
                out += [_enc_int(int(rng.integers(parts))) for _ in range(feats)]
            else:
                out += [_enc_float(float(x)) for x in rng.normal(size=2 * feats) * 0.2]
    return b"".join(out)


def _read_sp(data, bulk, monkeypatch):
    with monkeypatch.context() as m:
        if not bulk:
            m.setattr(dlib_shape_predictor, "_read_forest_bulk", lambda *a: None)
        return _outcome(lambda: dlib_shape_predictor.read_shape_predictor("sp.dat", data))


def _same(a, b):
    if a[0] != "ok" or b[0] != "ok":
        return a == b
    return all(getattr(a[1], f).tobytes() == getattr(b[1], f).tobytes()
               and getattr(a[1], f).dtype == getattr(b[1], f).dtype
               and getattr(a[1], f).shape == getattr(b[1], f).shape
               for f in ("initial_shape", "splits_idx", "splits_thresh", "leaf_values",
                         "anchor_idx", "deltas"))


def test_bulk_shape_predictor_matches_value_by_value(monkeypatch):
    rng = np.random.default_rng(5)
    data = _shape_predictor_bytes(rng)
    calls = []
    real = dlib_shape_predictor._read_forest_bulk
    monkeypatch.setattr(dlib_shape_predictor, "_read_forest_bulk",
                        lambda *a: calls.append(real(*a)) or calls[-1])
    fast = _read_sp(data, True, monkeypatch)
    assert fast[0] == "ok" and len(calls) == 2 and all(c is not None for c in calls)
    assert fast[1].leaf_values.shape == (2, 24, 8, 10) and fast[1].deltas.shape == (2, 30, 2)
    assert _same(fast, _read_sp(data, False, monkeypatch))
    # trees of different depths: the same error either way
    odd = _shape_predictor_bytes(rng, depths=[3] * 20 + [2] * 4)
    assert _same(_read_sp(odd, True, monkeypatch), _read_sp(odd, False, monkeypatch))
    assert "different depths" in _read_sp(odd, True, monkeypatch)[1]


def test_damaged_shape_predictor_same_outcome_bulk_or_not(monkeypatch):
    """Bytes overwritten or cut anywhere: the bulk path ends as the value-by-value one does (the
    same values, or the same exception and message)."""
    rng = np.random.default_rng(6)
    data = _shape_predictor_bytes(rng)
    for trial in range(24):
        damaged = bytearray(data)
        at = int(rng.integers(len(data)))
        if trial % 3 == 0:
            damaged = damaged[:at]
        else:
            damaged[at] = int(rng.choice([0x7F, 0x00, 0x09, 0x30, 0x81, 0x02, 0x88]))
        fast, slow = _read_sp(bytes(damaged), True, monkeypatch), _read_sp(bytes(damaged), False,
                                                                            monkeypatch)
        assert _same(fast, slow), (trial, at, fast[:1], slow[:1])
