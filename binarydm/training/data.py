"""Image data for diffusion training: CIFAR-10, Fashion-MNIST, an image folder, and a synthetic source.

Every dataset yields float tensors (C, H, W) scaled to [-1, 1]. The training loader draws batch k
from a permutation seeded by (seed, epoch of k) and starts at the trainer's global step, so a
resumed run sees exactly the batches the uninterrupted run would have seen, and each DDP rank takes
its own slice of every global batch (no DistributedSampler needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import lightning as L
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from ..datasets import DatasetNotFoundError, read_cifar10, read_idx
from .config import DataConfig

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


# ---- datasets -------------------------------------------------------------------------------
class TensorImages(Dataset):
    """Images held in memory as uint8 (N, C, H, W); served as floats in [-1, 1], or as (image, label)
    pairs when ``labels`` (N,) are given."""

    def __init__(self, images: torch.Tensor, labels: Optional[torch.Tensor] = None):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError("TensorImages expects uint8 images of shape (N, C, H, W)")
        if labels is not None and tuple(labels.shape) != (images.shape[0],):
            raise ValueError(f"TensorImages: labels of shape {tuple(labels.shape)} for {images.shape[0]} images")
        self.images = images
        self.labels = None if labels is None else labels.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int):
        image = self.images[i].float() / 127.5 - 1.0
        return image if self.labels is None else (image, self.labels[i])

    def with_labels(self, labels: torch.Tensor) -> "TensorImages":
        return TensorImages(self.images, labels)


def _find_idx(root: str, stem: str) -> Optional[Path]:
    """A Fashion-MNIST IDX file ``stem`` (or ``stem.gz``) in ``root`` or torchvision's ``FashionMNIST/raw``."""
    directory = Path(root)
    candidates = [directory / stem, directory / f"{stem}.gz", directory / "FashionMNIST" / "raw" / stem,
                  directory / "FashionMNIST" / "raw" / f"{stem}.gz"]
    return next((p for p in candidates if p.is_file()), None)


def fashion_mnist_labels(root: str, train: bool) -> torch.Tensor:
    """Fashion-MNIST's class labels (0-9: T-shirt, trouser, pullover, dress, coat, sandal, shirt, sneaker,
    bag, ankle boot) from its IDX label file."""
    stem = "train-labels-idx1-ubyte" if train else "t10k-labels-idx1-ubyte"
    path = _find_idx(root, stem)
    if path is None:
        raise DatasetNotFoundError(f"Fashion-MNIST labels not found: no {stem}[.gz] in data.root={root!r} "
                                   "(data.labels=true needs them)")
    return read_idx(path).long().reshape(-1)


def fashion_mnist(root: str, train: bool, image_size: int = 32, channels: int = 1) -> TensorImages:
    """Fashion-MNIST (Xiao et al. 2017) from its IDX files, zero-padded from 28x28 to ``image_size``."""
    stem = "train-images-idx3-ubyte" if train else "t10k-images-idx3-ubyte"
    path = _find_idx(root, stem)
    if path is None:
        raise DatasetNotFoundError(
            f"Fashion-MNIST not found: no {stem}[.gz] in data.root={root!r}. Install it with "
            "`apt-get install dataset-fashion-mnist` (it puts them in "
            f"{FASHION_MNIST_DIR}; then set data.root={FASHION_MNIST_DIR}), "
            "or point data.root at a directory holding the IDX files"
        )
    images = read_idx(path).unsqueeze(1)  # (N, 1, 28, 28), black background = 0
    pad = image_size - images.shape[-1]
    if pad < 0:
        raise ValueError(f"data.image_size={image_size} is smaller than Fashion-MNIST's 28 pixels")
    images = F.pad(images, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
    if channels == 3:
        images = images.expand(-1, 3, -1, -1).contiguous()
    return TensorImages(images)


def cifar10(root: str, train: bool, download: bool) -> Dataset:
    """CIFAR-10 (Krizhevsky 2009) through torchvision."""
    images, _ = read_cifar10(root, train, download, root_option="data.root", download_option="data.download=true")
    return TensorImages(images)  # (N, 3, 32, 32) uint8


class ImageFolder(Dataset):
    """Every image file under ``root`` (recursively), RGB or grey, resized and centre-cropped."""

    def __init__(self, root: str, image_size: int, channels: int = 3):
        self.paths = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise DatasetNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under data.root={root!r}")
        from torchvision import transforms

        self.mode = "RGB" if channels == 3 else "L"
        self.transform = transforms.Compose([
            transforms.Resize(image_size), transforms.CenterCrop(image_size), transforms.PILToTensor(),
        ])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            return self.transform(im.convert(self.mode)).float() / 127.5 - 1.0


SYNTHETIC_CLASSES = 10


def synthetic(n: int, image_size: int, channels: int, seed: int = 0, labels: bool = False) -> TensorImages:
    """Smooth random images (4x4 noise upsampled bilinearly): structured enough to be learnable. With
    ``labels``, image i has class i mod 10 and its brightness grows with the class (learnable too)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, channels, 4, 4, generator=g)
    if labels:
        classes = torch.arange(n) % SYNTHETIC_CLASSES
        coarse = 0.5 * coarse + 0.5 * (classes.float() / (SYNTHETIC_CLASSES - 1)).view(n, 1, 1, 1)
    images = F.interpolate(coarse, size=(image_size, image_size), mode="bilinear", align_corners=False)
    out = TensorImages((images * 255).round().to(torch.uint8))
    return out.with_labels(torch.arange(n) % SYNTHETIC_CLASSES) if labels else out


def build_dataset(cfg: DataConfig, train: bool, seed: int = 0, labels: Optional[bool] = None) -> Dataset:
    """The training (``train``) or held-out images of ``cfg``; ``seed`` draws the synthetic ones. ``labels``
    (default ``cfg.labels``): yield (image, label) pairs."""
    labels = cfg.labels if labels is None else labels
    if labels and cfg.name not in ("fashion_mnist", "synthetic"):
        raise ValueError(f"data.labels=true: class labels are read for fashion_mnist and synthetic, not {cfg.name}")
    if cfg.name == "cifar10":
        ds = cifar10(cfg.root, train, cfg.download)
    elif cfg.name == "fashion_mnist":
        ds = fashion_mnist(cfg.root, train, cfg.image_size, cfg.channels)
        if labels:
            ds = ds.with_labels(fashion_mnist_labels(cfg.root, train))
    elif cfg.name == "folder":
        ds = ImageFolder(cfg.root, cfg.image_size, cfg.channels)
    else:
        ds = synthetic(cfg.synthetic_size, cfg.image_size, cfg.channels, seed=seed + (0 if train else 1),
                       labels=labels)
    return ds


# ---- latent data: the images as their autoencoder's latents, computed once (binarydm.latent.cache) ---------
class LatentImages(Dataset):
    """Cached latents served like images. Key ``(i, flip, drop)`` (the training sampler's) or ``i``: the
    latents of image i (mirrored where ``flip``); with ``labels``, (latents, label); with cached caption
    embeddings (``text``), (latents, embedding), the empty caption's embedding where ``drop``."""

    def __init__(self, cache, labels: Optional[torch.Tensor] = None, text: bool = False):
        self.cache = cache
        self.labels = labels
        self.text = text

    def __len__(self) -> int:
        return self.cache.count

    def __getitem__(self, key):
        i, flip, drop = (key, False, False) if isinstance(key, int) else key
        z = self.cache.latent(i, 1 if flip and self.cache.views == 2 else 0)
        if self.text:
            return z, self.cache.embedding(i, bool(drop))
        if self.labels is not None:
            return z, self.labels[i]
        return z


def _base(ds: Dataset) -> tuple[Dataset, Optional[list]]:
    if isinstance(ds, Subset):
        return ds.dataset, list(ds.indices)
    return ds, None


def dataset_digest(ds: Dataset) -> str:
    """What the images of ``ds`` are, for the latent cache's key: the bytes of an in-memory set, the names,
    sizes and times of a folder's files (a changed image changes them)."""
    import hashlib

    base, indices = _base(ds)
    h = hashlib.sha256()
    if isinstance(base, TensorImages):
        h.update(str(tuple(base.images.shape)).encode())
        h.update(base.images.contiguous().numpy().tobytes())
    elif isinstance(base, ImageFolder):
        for p in base.paths:
            st = p.stat()
            h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    else:
        raise ValueError(f"no latent cache for a {type(base).__name__} data set")
    if indices is not None:
        h.update(str(indices).encode())
    return h.hexdigest()


def _items(ds: Dataset, a: int, b: int) -> torch.Tensor:
    xs = [ds[i] for i in range(a, b)]
    return torch.stack([x[0] if isinstance(x, tuple) else x for x in xs])


def _labels(ds: Dataset) -> Optional[torch.Tensor]:
    base, indices = _base(ds)
    labels = getattr(base, "labels", None)
    if labels is None:
        return None
    return labels if indices is None else labels[indices]


def captions_of(cfg: DataConfig, ds: Dataset, seed: int) -> list[str]:
    """Each image's caption: a folder's own (metadata.jsonl or .txt), else made from class labels."""
    from ..latent.text import default_captions, folder_captions

    base, indices = _base(ds)
    if isinstance(base, ImageFolder):
        paths = base.paths if indices is None else [base.paths[i] for i in indices]
        return folder_captions(Path(cfg.root), paths)
    labels = _labels(ds)
    return default_captions(cfg.name, None if labels is None else labels.tolist(), seed)


def encode_split(cfg: DataConfig, ds: Dataset, components, split: str, seed: int, cache_dir: Optional[Path] = None,
                 flips: bool = False, progress: bool = True) -> LatentImages:
    """``ds`` as cached latents of ``components.autoencoder`` (and caption embeddings for a text model)."""
    from ..latent.cache import CACHE_VERSION, build_cache, default_root, module_digest, text_digest, tokenizer_digest

    captions = captions_of(cfg, ds, seed) if components.text else None
    views = 2 if flips else 1
    key = {"version": CACHE_VERSION, "split": split, "autoencoder": module_digest(components.autoencoder),
           "images": dataset_digest(ds), "image_size": int(cfg.image_size), "channels": int(cfg.channels),
           "views": views}
    if captions is not None:
        key["text"] = module_digest(components.text_encoder) + ":" + tokenizer_digest(components.tokenizer)
        key["captions"] = text_digest(captions)
    if cache_dir is None:
        import hashlib
        import json

        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        directory = default_root() / f"{cfg.name}-{split}-{digest}"
    else:
        directory = Path(cache_dir) / split
    cache = build_cache(directory, key, len(ds), lambda a, b: _items(ds, a, b), components.autoencoder, views,
                        captions, components.text_encoder, components.tokenizer, progress=progress,
                        desc=f"latents of the {split} images")
    labels = None if components.text else _labels(ds)
    return LatentImages(cache, labels if cfg.labels else None, text=components.text)


# ---- sampling -------------------------------------------------------------------------------
class StepBatchSampler(Sampler):
    """Endless batches; global batch k is a slice of permutation(seed, epoch = k // batches_per_epoch).

    Rank r of W processes takes every W-th index of each global batch. ``start`` is the first batch
    index (the trainer's global step on resume). Each index comes with its flip (``random_flip``) and
    whether its caption is dropped (``drop_rate``: classifier-free guidance), both drawn from the same
    generator after the permutation, so a resumed run draws them again exactly.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, start: int = 0, rank: int = 0, world_size: int = 1,
                 random_flip: bool = False, drop_rate: float = 0.0):
        if batch_size % world_size:
            raise ValueError(f"data.batch_size={batch_size} is not divisible by the {world_size} processes")
        if n < batch_size:
            raise ValueError(f"the dataset has {n} images, fewer than one batch of {batch_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start, self.rank, self.world_size = start, rank, world_size
        self.per_epoch = n // batch_size
        self.random_flip = random_flip
        self.drop_rate = float(drop_rate)

    def batch(self, k: int) -> list[tuple[int, bool, bool]]:
        """(index, flip, drop) triples of this rank's share of global batch k."""
        epoch, i = divmod(k, self.per_epoch)
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        perm = torch.randperm(self.n, generator=g)
        flips = torch.rand(self.n, generator=g) < 0.5 if self.random_flip else torch.zeros(self.n, dtype=torch.bool)
        drops = torch.rand(self.n, generator=g) < self.drop_rate if self.drop_rate > 0 else \
            torch.zeros(self.n, dtype=torch.bool)
        sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
        mine = slice(self.rank, None, self.world_size)
        idx, flip, drop = perm[sl][mine], flips[sl][mine], drops[sl][mine]
        return list(zip(idx.tolist(), flip.tolist(), drop.tolist()))

    def __iter__(self) -> Iterator[list[tuple[int, bool, bool]]]:
        k = self.start
        while True:
            yield self.batch(k)
            k += 1


class _Indexed(Dataset):
    """``ds[(i, flip)]``: image i, mirrored horizontally when ``flip`` (the sampler decides, deterministically)."""

    def __init__(self, ds: Dataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key):
        i, flip = key[0], key[1]
        x = self.ds[i]
        if isinstance(x, tuple):
            return (x[0].flip(-1) if flip else x[0]), x[1]
        return x.flip(-1) if flip else x


def collate(items):
    """Images -> (N, C, H, W); (image, label) pairs -> ((N, C, H, W), (N,))."""
    if isinstance(items[0], (tuple, list)):
        return torch.stack([x for x, _ in items]), torch.stack([torch.as_tensor(y) for _, y in items])
    return torch.stack(items)


class DiffusionDataModule(L.LightningDataModule):
    """``cfg``'s images; ``seed`` (the run's) orders the batches and draws the synthetic images. With the
    ``components`` of a latent pipeline the images become their cached latents (and, for a text-conditioned
    UNet, their captions' cached embeddings): ``encode_split``."""

    def __init__(self, cfg: DataConfig, seed: int = 0, components=None):
        super().__init__()
        self.cfg = cfg
        self.seed = seed
        self.components = components
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None

    @property
    def latent(self) -> bool:
        return self.components is not None and self.components.latent

    @property
    def text(self) -> bool:
        return self.components is not None and self.components.text

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        if self.text and self.cfg.name not in ("folder", "fashion_mnist", "synthetic"):
            raise ValueError(f"a text-conditioned UNet reads captions: data.name=folder (metadata.jsonl or .txt files) "
                             f"or fashion_mnist / synthetic (captions from class names), not {self.cfg.name}")
        # Captions of a labelled set are made from its labels.
        labels = self.cfg.labels or (self.text and self.cfg.name != "folder")
        train = build_dataset(self.cfg, train=True, seed=self.seed, labels=labels)
        if self.cfg.name in ("cifar10", "fashion_mnist", "synthetic"):
            val = build_dataset(self.cfg, train=False, seed=self.seed, labels=labels)
        else:  # a folder has no split: validate on its first images
            val = train
        if self.cfg.subset:
            train = Subset(train, range(min(self.cfg.subset, len(train))))
        val = Subset(val, range(min(self.cfg.val_size, len(val))))
        if self.latent:
            cache = Path(self.cfg.latent_cache) if self.cfg.latent_cache else None
            # Held-out captions use another template draw than the training ones (seed + 1).
            train = encode_split(self.cfg, train, self.components, "train", self.seed, cache, self.cfg.random_flip)
            val = encode_split(self.cfg, val, self.components, "val", self.seed + 1, cache)
        self.train_set, self.val_set = train, val

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        start = trainer.global_step if trainer is not None else 0
        rank = trainer.global_rank if trainer is not None else 0
        world = trainer.world_size if trainer is not None else 1
        sampler = StepBatchSampler(len(self.train_set), self.cfg.batch_size, self.seed, start, rank, world,
                                   random_flip=self.cfg.random_flip,
                                   drop_rate=self.cfg.caption_dropout if self.text else 0.0)
        dataset = self.train_set if self.latent else _Indexed(self.train_set)
        return DataLoader(dataset, batch_sampler=sampler, num_workers=self.cfg.num_workers, collate_fn=collate)

    def val_dataloader(self) -> DataLoader:
        world = self.trainer.world_size if self.trainer is not None else 1
        return DataLoader(self.val_set, batch_size=max(1, self.cfg.batch_size // world), shuffle=False,
                          num_workers=self.cfg.num_workers, collate_fn=collate)


__all__ = ["DataConfig", "DiffusionDataModule", "DatasetNotFoundError", "LatentImages", "StepBatchSampler",
           "TensorImages", "ImageFolder", "build_dataset", "captions_of", "cifar10", "dataset_digest", "encode_split",
           "fashion_mnist", "synthetic", "FASHION_MNIST_DIR"]
