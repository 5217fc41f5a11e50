"""FID and KID between generated images and a reference, through clean-fid and through torchmetrics.

FID (Heusel et al. 2017): with (mu_1, S_1), (mu_2, S_2) the mean and covariance of the Inception
pool3 features of the two sets,

    FID = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)).

KID (Binkowski et al. 2018): the unbiased MMD^2 with the polynomial kernel k(x, y) = (x.y / d + 1)^3,
averaged over random subsets (clean-fid's ``kernel_distance``).

Two independent FID computations share one feature extractor (:mod:`binarydm.evaluation.inception`):

* clean-fid (Parmar et al. 2022): ``cleanfid.fid.compute_fid(..., custom_feat_extractor=...)`` for two
  folders; its folder reader (PIL, "clean" bicubic float resize) and the value of its ``frechet_distance``
  (:func:`fid_from_features`, exact without scipy's sqrtm) for a folder against a cached reference.
* torchmetrics: ``FrechetInceptionDistance(feature=<extractor>)`` fed the raw uint8 batches (the
  extractor applies the same clean resize), or, for a cached reference, its real-feature sums set
  from the cached features (the metric's state is exactly these sufficient statistics).

Inception Score is not offered: the offline Inception weights stop at pool3 and have no classifier
head, which IS needs. Neither library offers precision/recall for images.

Reference features are computed once and cached on disk (``.npy``), keyed by dataset, split, image
count, image size and the feature extractor's identity (the SHA-1 of the Inception weights).

An image folder as the reference: ``num`` of its images drawn at random without replacement with a
seed (:func:`folder_subset`: the same seed, the same files; default seed 0), not its first ``num`` in
path order, which in a folder of patches cut from a few photos are the patches of one photo. Each
image is resized (shorter side) and centre-cropped to ``size`` x ``size`` as the training data module
does (a no-op for images of that size), so a folder of photos of mixed sizes is a reference too.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch.nn import functional as F

from ..datasets import DatasetNotFoundError, read_cifar10, read_idx
from .inception import FeatureExtractor

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
PathLike = Union[str, os.PathLike]


DatasetNotFound = DatasetNotFoundError  # the name this module has always exported


def default_cache_dir() -> Path:
    """``$BINARYDM_CACHE/fid`` or ``~/.cache/binarydm/fid``."""
    root = os.environ.get("BINARYDM_CACHE") or Path.home() / ".cache" / "binarydm"
    return Path(root) / "fid"


# ---- images ----------------------------------------------------------------------------------------
def resolve_folder(folder: PathLike) -> Path:
    """``folder``, or ``folder/images`` when it is a ``binarydm.sample`` output directory."""
    folder = Path(folder)
    return folder / "images" if (folder / "images").is_dir() else folder


def image_files(folder: PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetNotFound(f"{folder}: no such image folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetNotFound(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return files


def check_one_size(folder: PathLike, files: Optional[Sequence[Path]] = None) -> Optional[tuple[int, int]]:
    """The (width, height) every image of ``folder`` (or of ``files``, the ones used) has, read from the
    headers, or a one-line UsageError naming a file of each size: generated images are compared as they are,
    so they must agree. None for no files."""
    from PIL import Image

    from ..errors import UsageError

    first: dict[tuple[int, int], Path] = {}
    for f in files if files is not None else image_files(folder):
        with Image.open(f) as im:
            first.setdefault(im.size, f)
        if len(first) > 1:
            (a, fa), (b, fb) = list(first.items())[:2]
            raise UsageError(f"{folder}: images of different sizes ({fa.name} is {a[0]}x{a[1]}, {fb.name} is "
                             f"{b[0]}x{b[1]}); FID compares generated images of one size: sample them again, or "
                             "resize them to one size")
    return next(iter(first), None)


def folder_subset(files: Sequence[Path], num: Optional[int], seed: int = 0) -> list[Path]:
    """``num`` of ``files`` drawn at random without replacement (numpy's ``default_rng(seed)``), kept in
    their order; all of them where ``num`` is None. The same files and seed give the same subset."""
    files = list(files)
    if num is None:
        return files
    if len(files) < num:
        raise ValueError(f"{len(files)} images, {num} requested")
    picked = np.random.default_rng(seed).choice(len(files), size=num, replace=False)
    return [files[i] for i in sorted(picked.tolist())]


def load_folder(folder: PathLike, num: Optional[int] = None, seed: Optional[int] = None,
                size: Optional[int] = None) -> torch.Tensor:
    """The images of a folder (recursively, sorted by path) as uint8 [N, 3, H, W] (grey -> RGB).

    ``num``: the first ``num`` (generated images: the sampler's first seeds), or with ``seed`` a seeded
    random subset (:func:`folder_subset`: a reference). ``size``: each image resized (shorter side) and
    centre-cropped to ``size`` x ``size``, as the training data module does."""
    from PIL import Image

    files = image_files(folder)
    if num is not None and len(files) < num:
        raise ValueError(f"{folder}: {len(files)} images, {num} requested")
    files = folder_subset(files, num, seed) if seed is not None else files[:num]
    if size is None:
        check_one_size(folder, files)
    fit = _fit_to(size) if size is not None else (lambda im: im)
    arrays = []
    for f in files:
        with Image.open(f) as im:
            arrays.append(np.asarray(fit(im.convert("RGB"))))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _square_size(folder: PathLike) -> Optional[int]:
    """The side of the first image of ``folder`` where it is square (read from its header), else None."""
    from PIL import Image

    with Image.open(image_files(folder)[0]) as im:
        w, h = im.size
    return w if w == h else None


def _fit_to(size: int):
    """Resize (shorter side, bilinear with antialiasing) and centre crop to ``size``: the transform of
    the training data's image folder (binarydm.training.data.ImageFolder)."""
    from torchvision import transforms

    return transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size)])


def fashion_mnist(split: str = "test", root: PathLike = FASHION_MNIST_DIR, size: int = 32,
                  num: Optional[int] = None) -> torch.Tensor:
    """Fashion-MNIST (Xiao et al. 2017) as uint8 [N, 3, size, size]: the 28x28 grey images zero-padded
    (centred, black background) to ``size`` as the training data module does, grey repeated to RGB."""
    stem = {"test": "t10k-images-idx3-ubyte", "train": "train-images-idx3-ubyte"}.get(split)
    if stem is None:
        raise ValueError(f"Fashion-MNIST split must be 'test' or 'train', got {split!r}")
    root = Path(root)
    path = next((p for p in (root / stem, root / f"{stem}.gz") if p.is_file()), None)
    if path is None:
        raise DatasetNotFound(
            f"Fashion-MNIST not found: no {stem}[.gz] in root={root}. Install it with "
            f"`apt-get install dataset-fashion-mnist` (files in {FASHION_MNIST_DIR}) or pass root=DIR"
        )
    images = read_idx(path)
    if num is not None:
        images = images[:num]
    pad = size - images.shape[-1]
    if pad < 0:
        raise ValueError(f"size={size} is smaller than Fashion-MNIST's 28 pixels")
    images = F.pad(images.unsqueeze(1), (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
    return images.expand(-1, 3, -1, -1).contiguous()


def cifar10(split: str = "train", root: PathLike = "data", num: Optional[int] = None,
            download: bool = False) -> torch.Tensor:
    """CIFAR-10 (Krizhevsky 2009) through torchvision, as uint8 [N, 3, 32, 32]."""
    images, _ = read_cifar10(str(root), split == "train", download)
    return images if num is None else images[:num]


def reference_images(ref: str, split: str = "test", num: Optional[int] = None, root: Optional[PathLike] = None,
                     size: int = 32, download: bool = False, seed: int = 0) -> torch.Tensor:
    """Reference images by name (``fashion-mnist``, ``cifar10``) or from a folder, uint8 [N, 3, H, W].

    A folder gives ``num`` images drawn with ``seed`` (:func:`folder_subset`), each brought to ``size``
    x ``size`` as for training; a named set its first ``num`` images of ``split``."""
    name = ref.lower().replace("_", "-")
    if name == "fashion-mnist":
        return fashion_mnist(split, root or FASHION_MNIST_DIR, size, num)
    if name == "cifar10":
        return cifar10(split, root or "data", num, download)
    if Path(ref).is_dir():
        return load_folder(resolve_folder(ref), num, seed=seed, size=size)
    raise DatasetNotFound(f"reference {ref!r} is neither 'fashion-mnist', 'cifar10' nor an image folder")


# ---- features and distances ------------------------------------------------------------------------
@torch.no_grad()
def extract_features(images: torch.Tensor, extractor: FeatureExtractor, batch_size: int = 64,
                     progress: bool = False) -> np.ndarray:
    """Features [N, d] (float64) of uint8 images [N, 3, H, W]."""
    from tqdm.auto import tqdm

    chunks = images.split(batch_size)
    outs = [extractor(c).double().numpy() for c in tqdm(chunks, desc="features", disable=not progress)]
    return np.concatenate(outs)


def _covariance_factor(features: np.ndarray) -> np.ndarray:
    """B with B^T B = the unbiased covariance of ``features`` [N, d]: the centred features / sqrt(N - 1)
    (N x d) when N <= d, else Lambda^(1/2) U^T from the covariance's eigendecomposition (d x d)."""
    n, d = features.shape
    centred = (features - features.mean(axis=0)) / np.sqrt(n - 1)
    if n <= d:
        return centred
    lam, u = np.linalg.eigh(centred.T @ centred)
    return np.sqrt(np.clip(lam, 0.0, None))[:, None] * u.T


def fid_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    """FID between two feature sets: ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)).

    The value of clean-fid's ``frechet_distance``, computed without scipy's general matrix square root
    (17 s for 2048 x 2048 on one core, where this takes well under a second at 2,000 samples): with
    S_i = B_i^T B_i, the eigenvalues of S1 S2 are the squared singular values of B1 B2^T, so
    tr((S1 S2)^(1/2)) is the sum of those singular values. Exact, and free of sqrtm's imaginary residue
    on the rank-deficient covariances of fewer samples than features (tests/test_evaluation.py checks it
    against clean-fid's function)."""
    if f1.shape[0] < 2 or f2.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 samples per set, got {f1.shape[0]} and {f2.shape[0]}")
    b1, b2 = _covariance_factor(f1), _covariance_factor(f2)
    trace_sqrt = np.linalg.svd(b1 @ b2.T, compute_uv=False).sum()
    mean_term = float(((f1.mean(axis=0) - f2.mean(axis=0)) ** 2).sum())
    return float(mean_term + (b1 ** 2).sum() + (b2 ** 2).sum() - 2.0 * trace_sqrt)


def kid_from_features(f1: np.ndarray, f2: np.ndarray, seed: int = 0, num_subsets: int = 100,
                      max_subset_size: int = 1000) -> float:
    """KID (clean-fid's ``kernel_distance``; its subsets are drawn from numpy's global RNG, seeded here)."""
    from cleanfid.fid import kernel_distance

    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return float(kernel_distance(f1, f2, num_subsets=num_subsets, max_subset_size=max_subset_size))
    finally:
        np.random.set_state(state)


def cleanfid_folder_features(folder: PathLike, extractor: FeatureExtractor, batch_size: int = 64,
                             num: Optional[int] = None) -> np.ndarray:
    """Features of a folder read by clean-fid (its loader and its "clean" bicubic resize to the
    extractor's input size)."""
    from cleanfid.fid import get_folder_features
    from cleanfid.resize import make_resizer

    resize = make_resizer("PIL", False, "bicubic", (extractor.input_size, extractor.input_size))
    return get_folder_features(str(folder), extractor, num_workers=0, num=num, batch_size=batch_size,
                               device=torch.device("cpu"), mode="clean", custom_fn_resize=resize,
                               verbose=False).astype(np.float64)


def cleanfid_compare_folders(folder1: PathLike, folder2: PathLike, extractor: FeatureExtractor,
                             batch_size: int = 64) -> float:
    """FID between two folders, entirely through ``cleanfid.fid.compute_fid`` with our extractor."""
    from cleanfid.fid import compute_fid
    from cleanfid.resize import make_resizer

    resize = make_resizer("PIL", False, "bicubic", (extractor.input_size, extractor.input_size))
    return float(compute_fid(str(folder1), str(folder2), mode="clean", custom_feat_extractor=extractor,
                             custom_fn_resize=resize, num_workers=0, batch_size=batch_size,
                             device=torch.device("cpu"), verbose=False))


def torchmetrics_fid(fake: torch.Tensor, extractor: FeatureExtractor, real: Optional[torch.Tensor] = None,
                     real_features: Optional[np.ndarray] = None, batch_size: int = 64) -> float:
    """FID through ``torchmetrics.image.FrechetInceptionDistance(feature=extractor)``.

    ``fake`` (and ``real``) are uint8 [N, 3, H, W], handed to the metric unchanged. With
    ``real_features`` (a cached reference) the metric's real-feature state (sum, sum of outer
    products, count) is set from them instead of re-extracting the reference images.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=extractor, normalize=False, reset_real_features=False)
    if real_features is not None:
        f = torch.from_numpy(np.asarray(real_features, dtype=np.float64))
        metric.real_features_sum = f.sum(dim=0)
        metric.real_features_cov_sum = f.t().mm(f)
        metric.real_features_num_samples = torch.tensor(f.shape[0], dtype=torch.long)
    elif real is not None:
        for chunk in real.split(batch_size):
            metric.update(chunk, real=True)
    else:
        raise ValueError("torchmetrics_fid needs real images or real_features")
    for chunk in fake.split(batch_size):
        metric.update(chunk, real=False)
    return float(metric.compute())


# ---- the reference cache ---------------------------------------------------------------------------
def _folder_fingerprint(folder: PathLike) -> str:
    h = hashlib.sha1()
    for f in image_files(folder):
        st = f.stat()
        h.update(f"{f.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def reference_key(ref: str, split: str, num: Optional[int], size: int, extractor: FeatureExtractor,
                  seed: int = 0) -> str:
    """File name of the cached reference features: dataset, split, count, size, extractor identity (and
    for a folder subset, its seed)."""
    name = ref.lower().replace("_", "-")
    count = "all" if num is None else str(num)
    if name not in ("fashion-mnist", "cifar10"):
        folder = resolve_folder(ref)
        name = f"folder-{folder.parent.name if folder.name == 'images' else folder.name}-{_folder_fingerprint(folder)}"
        split = "fitted"  # the images resized and cropped to size (keys of unfitted folders do not match)
        if num is not None:
            count += f"-seed{seed}"
    return f"{name}_{split}_n{count}_s{size}_{extractor.identity}.npy"


def reference_features(ref: str, extractor: FeatureExtractor, split: str = "test", num: Optional[int] = None,
                       root: Optional[PathLike] = None, size: int = 32, cache_dir: Optional[PathLike] = None,
                       batch_size: int = 64, download: bool = False, progress: bool = False,
                       seed: int = 0) -> np.ndarray:
    """Features of a reference set, computed once and then read from ``cache_dir``."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_dir / reference_key(ref, split, num, size, extractor, seed)
    if path.is_file():
        return np.load(path)
    images = reference_images(ref, split, num, root, size, download, seed)
    feats = extract_features(images, extractor, batch_size, progress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, feats)
    os.replace(tmp, path)  # atomic: a killed run never leaves a half-written cache entry
    return feats


def evaluate(fake_folder: PathLike, ref: str, extractor: FeatureExtractor, split: str = "test",
             num: Optional[int] = None, ref_num: Optional[int] = None, root: Optional[PathLike] = None,
             size: int = 32, cache_dir: Optional[PathLike] = None,
             backends: Sequence[str] = ("cleanfid", "torchmetrics"),
             kid: bool = True, batch_size: int = 64, progress: bool = False, ref_seed: int = 0,
             check_sizes: bool = True) -> dict[str, float]:
    """FID (each backend) and KID of the images of ``fake_folder`` against a reference. A folder
    reference gives ``ref_num`` images drawn with ``ref_seed``, fitted to the generated images' size
    (``size`` where they are not square). ``check_sizes=False``: the caller has run :func:`check_one_size`."""
    fake_folder = resolve_folder(fake_folder)
    if check_sizes:  # before any backend reads them (clean-fid would resize them silently)
        check_one_size(fake_folder, image_files(fake_folder)[:num])
    if ref.lower().replace("_", "-") not in ("fashion-mnist", "cifar10"):
        size = _square_size(fake_folder) or size
    results: dict[str, float] = {}
    real = reference_features(ref, extractor, split, ref_num, root, size, cache_dir, batch_size, progress=progress,
                              seed=ref_seed)
    results["num_real"] = int(real.shape[0])
    fake_feats = None
    if "cleanfid" in backends:
        fake_feats = cleanfid_folder_features(fake_folder, extractor, batch_size, num)
        results["fid_cleanfid"] = fid_from_features(fake_feats, real)
    if "torchmetrics" in backends:
        fake = load_folder(fake_folder, num)
        results["fid_torchmetrics"] = torchmetrics_fid(fake, extractor, real_features=real, batch_size=batch_size)
    if kid:
        if fake_feats is None:
            fake_feats = extract_features(load_folder(fake_folder, num), extractor, batch_size)
        results["kid"] = kid_from_features(fake_feats, real)
    results["num_fake"] = (int(fake_feats.shape[0]) if fake_feats is not None
                           else int(num or len(image_files(fake_folder))))
    return results


__all__ = [
    "DatasetNotFound", "cifar10", "cleanfid_compare_folders", "cleanfid_folder_features", "default_cache_dir",
    "check_one_size", "evaluate", "extract_features", "fashion_mnist", "fid_from_features", "folder_subset", "image_files",
    "kid_from_features", "load_folder", "reference_features", "reference_images", "reference_key", "resolve_folder",
    "torchmetrics_fid",
]
