"""Post-processing transforms: shapes, determinism, parameters, chains, geometry, errors."""
import numpy as np
import pytest

from idguardian_jax.evaluate import transforms


@pytest.fixture(scope="module")
def photo():
    """A smooth 96x128 RGB test pattern with some texture (no files needed)."""
    y, x = np.mgrid[0:96, 0:128]
    rng = np.random.default_rng(0)
    img = np.stack([x * 2, y * 2.5, 128 + 60 * np.sin(x / 7.0) * np.cos(y / 5.0)], -1)
    img = img + rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


ALL = list(transforms.DEFAULT) + ["none", "webp80", "median5", "bits3", "noise1.5",
                                  "crop0.8+blur0.5+jpeg90"]


@pytest.mark.parametrize("name", ALL)
def test_shape_dtype_and_determinism(photo, name):
    t = transforms.parse(name)
    a, b = t(photo), t(photo.copy())
    assert a.shape == photo.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert t.name == name
    # a parsed-again transform gives the same pixels (fixed seeds, no hidden state)
    np.testing.assert_array_equal(transforms.parse(name)(photo), a)


@pytest.mark.parametrize("name", [n for n in ALL if n != "none"])
def test_changes_the_photo(photo, name):
    assert not np.array_equal(transforms.parse(name)(photo), photo)


def test_none_is_identity_and_copies(photo):
    out = transforms.parse("none")(photo)
    np.testing.assert_array_equal(out, photo)
    assert out is not photo


def test_jpeg_quality_ordering(photo):
    err = [np.abs(transforms.parse(f"jpeg{q}")(photo).astype(int) - photo).mean()
           for q in (95, 85, 75, 50)]
    assert err == sorted(err) and err[0] < err[-1]


def test_blur_and_noise_strength_ordering(photo):
    d = lambda n: np.abs(transforms.parse(n)(photo).astype(int) - photo).mean()  # noqa: E731
    assert d("blur0.5") < d("blur1") < d("blur2")
    assert d("noise2") < d("noise4") < d("noise8")
    assert d("bits6") < d("bits4")


def test_blur_kernel_and_flat_image():
    k = transforms.gaussian_kernel(1.0)
    assert len(k) == 9 and abs(k.sum() - 1) < 1e-12 and k[4] == k.max()
    flat = np.full((20, 30, 3), 77, np.uint8)
    for n in ("blur1", "median3", "resize0.5", "crop0.9"):
        np.testing.assert_array_equal(transforms.parse(n)(flat), flat)


def test_noise_is_seeded_not_random(photo):
    a = transforms.parse("noise4")(photo)
    rng_state = np.random.get_state()
    np.random.seed(123)
    b = transforms.parse("noise4")(photo)
    np.random.set_state(rng_state)
    np.testing.assert_array_equal(a, b)
    resid = a.astype(float) - photo
    assert 3.0 < resid.std() < 5.0


def test_bits_levels(photo):
    out = transforms.parse("bits2")(photo)
    assert set(np.unique(out)) <= {0, 85, 170, 255}


def test_chain_equals_composition(photo):
    chain = transforms.parse("resize0.5+jpeg75")
    manual = transforms.parse("jpeg75")(transforms.parse("resize0.5")(photo))
    np.testing.assert_array_equal(chain(photo), manual)
    assert chain.name == "resize0.5+jpeg75"
    assert transforms.parse(" Resize0.5 + JPEG75 ").name == "resize0.5+jpeg75"


def test_crop_geometry_maps_boxes(photo):
    t = transforms.parse("crop0.5")
    h, w = photo.shape[:2]
    # the centre stays the centre; a box at the crop's corner lands at the photo's corner
    ax, bx, ay, by = t.geometry((h, w))
    assert ax == pytest.approx(2.0) and ay == pytest.approx(2.0)
    assert ax * w / 2 + bx == pytest.approx(w / 2)
    assert t.map_box((32, 24, 95, 71), (h, w)) == (0, 0, 127, 95)
    # a bright square is found where the geometry says
    img = np.zeros((100, 100, 3), np.uint8)
    img[40:50, 40:50] = 255
    out = transforms.parse("crop0.8")(img)
    ys, xs = np.nonzero(out[..., 0] > 127)
    box = transforms.parse("crop0.8").map_box((40, 40, 49, 49), (100, 100))
    assert abs(xs.min() - box[0]) <= 1 and abs(xs.max() - box[2]) <= 1
    assert abs(ys.min() - box[1]) <= 1 and abs(ys.max() - box[3]) <= 1
    # chains compose geometry; photometric transforms keep it
    assert transforms.parse("jpeg75+crop0.5").geometry((h, w)) == pytest.approx(t.geometry((h, w)))
    assert transforms.parse("crop0.5+crop0.5").geometry((h, w))[0] == pytest.approx(4.0)
    assert transforms.parse("blur1").geometry((h, w)) == transforms.IDENTITY_GEOMETRY


@pytest.mark.parametrize("bad, msg", [
    ("sharpen2", "unknown transform 'sharpen2'"),
    ("jpeg", "needs a parameter"),
    ("jpeg0", "quality must be in"),
    ("jpeg75.5", "must be an integer"),
    ("resize1.5", "scale must be in"),
    ("crop1", "kept fraction must be in"),
    ("median4", "odd size"),
    ("bits8", "bits must be in"),
    ("blur0", "sigma must be in"),
    ("jpeg75+", "empty transform name"),
    ("", "empty transform name"),
    ("resize0.5+foo", "unknown transform 'foo' in 'resize0.5+foo'"),
])
def test_bad_names(bad, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace("+", r"\+")):
        transforms.parse(bad)


def test_parse_list_default_and_duplicates():
    names = [t.name for t in transforms.parse_list("default,jpeg75,blur2")]
    assert names == list(transforms.DEFAULT) + ["blur2"]
    assert transforms.parse_list("") == []
    with pytest.raises(ValueError, match="unknown transform"):
        transforms.parse_list("jpeg75,nope")


def test_rejects_non_rgb():
    with pytest.raises(ValueError, match=r"transform jpeg75: expected \(H, W, 3\) uint8"):
        transforms.parse("jpeg75")(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        transforms.parse("blur1")(np.zeros((8, 8, 3), np.float32))
