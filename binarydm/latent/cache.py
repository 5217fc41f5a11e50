"""The on-disk cache of a latent run's data: latents (and prompt embeddings) computed once, read memory-mapped.

A training step of a latent pipeline then runs no autoencoder and no text encoder. One directory holds one
split of one data set as seen by one autoencoder:

    meta.json           the key (what the cache is of), shapes, and ``complete``
    latents.npy         float16 (V, N, c, h, w): V = 2 with data.random_flip (the mirrored image's latents,
                        so a flip stays exact), else 1; written as latents.partial.npy, renamed when done
    progress.json       rows of latents.partial.npy written so far (a killed build resumes from there)
    captions.json       the distinct captions, "" first (the dropped caption of classifier-free guidance)
    caption_index.npy   int32 (N,): image i's caption in captions.json
    embeddings.npy      float16 (U, L, D): the text encoder's embedding of each distinct caption

The key holds a digest of the autoencoder's config and weights (and of the text encoder's and tokenizer's),
of the images (their bytes for in-memory data sets, names, sizes and times for a folder), the captions, the
image size, channels and the flip views. A directory whose key differs is refused with one line naming what
differs: nothing is ever silently reused for other data or another autoencoder, nor overwritten.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import UsageError
from ..packing.files import atomic_path, atomic_write, fsync_dir
from .components import encode_images
from .text import embed_prompts

CACHE_VERSION = 1
LATENTS = "latents.npy"
PARTIAL = "latents.partial.npy"


def default_root() -> Path:
    """``$BINARYDM_CACHE/latents`` or ``~/.cache/binarydm/latents``."""
    root = os.environ.get("BINARYDM_CACHE") or Path.home() / ".cache" / "binarydm"
    return Path(root) / "latents"


def module_digest(module: nn.Module) -> str:
    """SHA-256 of a model's config and every tensor of its state dict (name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    config = getattr(module, "config", None)
    if config is not None:
        items = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        h.update(json.dumps({k: v for k, v in items.items() if not str(k).startswith("_")}, sort_keys=True,
                            default=str).encode())
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{list(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def tokenizer_digest(tokenizer) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(sorted(tokenizer.get_vocab().items()), default=str).encode())
    h.update(str(tokenizer.model_max_length).encode())
    return h.hexdigest()


def text_digest(texts: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(texts)).encode()).hexdigest()


@dataclass
class LatentCache:
    """A complete cache directory, opened read-only (memory-mapped)."""

    directory: Path
    meta: dict
    latents: np.ndarray  # (V, N, c, h, w) float16, memory-mapped
    caption_index: Optional[np.ndarray] = None
    embeddings: Optional[np.ndarray] = None

    @property
    def count(self) -> int:
        return int(self.latents.shape[1])

    @property
    def views(self) -> int:
        return int(self.latents.shape[0])

    def latent(self, i: int, view: int = 0) -> torch.Tensor:
        return torch.from_numpy(np.array(self.latents[view, i], dtype=np.float32))

    def caption(self, i: int) -> str:
        if self.caption_index is None:
            raise ValueError("this latent cache holds no captions")
        if not hasattr(self, "_captions"):
            self._captions = json.loads((self.directory / "captions.json").read_text())
        return self._captions[int(self.caption_index[i])]

    def embedding(self, i: int, dropped: bool = False) -> torch.Tensor:
        row = 0 if dropped else int(self.caption_index[i])
        return torch.from_numpy(np.array(self.embeddings[row], dtype=np.float32))


def _differences(have: Mapping[str, Any], want: Mapping[str, Any]) -> list[str]:
    names = {"autoencoder": "autoencoder weights/config", "text": "text encoder/tokenizer", "images": "images",
             "captions": "captions", "image_size": "data.image_size", "channels": "data.channels",
             "views": "data.random_flip", "split": "split", "version": "cache format"}
    return [names.get(k, k) for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k)]


def _read_meta(directory: Path) -> Optional[dict]:
    file = directory / "meta.json"
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError):
        raise UsageError(f"{directory}: unreadable meta.json (a damaged latent cache); delete the directory to "
                         "rebuild it") from None


def _write_json(path: Path, value: Any) -> None:
    with atomic_write(path, "w") as f:
        json.dump(value, f, indent=1)


def open_cache(directory: Path, key: Mapping[str, Any], option: str = "data.latent_cache") -> Optional[LatentCache]:
    """The complete cache in ``directory`` when its key is ``key``; None when there is none yet (or it is
    unfinished); a one-line refusal when it belongs to other data or is damaged."""
    directory = Path(directory)
    meta = _read_meta(directory)
    if meta is None:
        return None
    if meta.get("key") != dict(key):
        differ = ", ".join(_differences(meta.get("key") or {}, key)) or "its key"
        raise UsageError(f"{option}={directory} holds the latents of other data or another autoencoder (differs in: "
                         f"{differ}); delete it or choose another {option}")
    if not meta.get("complete"):
        return None
    try:
        latents = np.load(directory / LATENTS, mmap_mode="r")
        index = np.load(directory / "caption_index.npy", mmap_mode="r") if meta.get("embeddings") else None
        embeddings = np.load(directory / "embeddings.npy", mmap_mode="r") if meta.get("embeddings") else None
    except (OSError, ValueError) as err:
        raise UsageError(f"{directory}: a damaged latent cache ({type(err).__name__}); delete the directory to "
                         "rebuild it") from None
    if list(latents.shape) != meta["latent_shape"] or latents.dtype != np.float16 or (
            embeddings is not None and list(embeddings.shape) != meta["embeddings"]["shape"]):
        raise UsageError(f"{directory}: a damaged latent cache (arrays of another shape than meta.json says); "
                         "delete the directory to rebuild it")
    return LatentCache(directory, meta, latents, index, embeddings)


def build_cache(directory: Path, key: Mapping[str, Any], n: int, images: Callable[[int, int], torch.Tensor],
                autoencoder: nn.Module, views: int = 1, captions: Optional[Sequence[str]] = None,
                text_encoder: Optional[nn.Module] = None, tokenizer=None, chunk: int = 256, progress: bool = True,
                option: str = "data.latent_cache", desc: str = "encoding latents") -> LatentCache:
    """Open the cache of ``key`` in ``directory``, building (or finishing) it first: ``images(a, b)`` gives
    images a..b-1 in [-1, 1]; view 1 is each image mirrored. Written chunk by chunk: a kill loses at most
    one chunk, and the next call continues where the last stopped."""
    directory = Path(directory)
    done = open_cache(directory, key, option)
    if done is not None:
        return done
    directory.mkdir(parents=True, exist_ok=True)
    # One writer: other processes (DDP ranks, a second run on the same data) wait here, then open the result.
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = open_cache(directory, key, option)
        if done is not None:
            return done
        return _build(directory, key, n, images, autoencoder, views, captions, text_encoder, tokenizer, chunk,
                      progress, option, desc)


def _build(directory: Path, key: Mapping[str, Any], n: int, images, autoencoder, views, captions, text_encoder,
           tokenizer, chunk: int, progress: bool, option: str, desc: str) -> LatentCache:
    meta = _read_meta(directory) or {"key": dict(key), "complete": False}
    _write_json(directory / "meta.json", meta)  # the key first: a half-built cache says what it is of
    probe = encode_images(autoencoder, images(0, 1))
    shape = [views, n, *probe.shape[1:]]
    partial = directory / PARTIAL
    if not _finished_latents(directory, shape):
        _encode(directory, partial, shape, n, images, autoencoder, views, chunk, progress, desc)
    if captions is not None:
        _write_embeddings(directory, captions, text_encoder, tokenizer)
        meta["embeddings"] = {"shape": list(np.load(directory / "embeddings.npy", mmap_mode="r").shape)}
    meta.update({"latent_shape": shape, "complete": True, "version": CACHE_VERSION})
    _write_json(directory / "meta.json", meta)
    (directory / "progress.json").unlink(missing_ok=True)
    return open_cache(directory, key, option)


def _finished_latents(directory: Path, shape: list) -> bool:
    """latents.npy renamed into place by a build killed before it wrote meta.json's ``complete``."""
    try:
        return list(np.load(directory / LATENTS, mmap_mode="r").shape) == shape
    except (OSError, ValueError):
        return False


def _encode(directory: Path, partial: Path, shape: list, n: int, images, autoencoder, views: int, chunk: int,
            progress: bool, desc: str) -> None:
    rows = 0
    if partial.is_file() and (directory / "progress.json").is_file():
        rows = int(json.loads((directory / "progress.json").read_text()).get("rows", 0))
        out = np.lib.format.open_memmap(partial, mode="r+")
        if list(out.shape) != shape:
            out, rows = None, 0
    else:
        out = None
    if out is None:
        out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=tuple(shape))
    from tqdm.auto import tqdm

    with tqdm(total=n, initial=rows, desc=desc, unit="img", disable=not progress) as bar:
        for a in range(rows, n, chunk):
            b = min(a + chunk, n)
            x = images(a, b)
            out[0, a:b] = encode_images(autoencoder, x).numpy().astype(np.float16)
            if views == 2:
                out[1, a:b] = encode_images(autoencoder, x.flip(-1)).numpy().astype(np.float16)
            out.flush()
            _write_json(directory / "progress.json", {"rows": b})
            bar.update(b - a)
    del out
    with open(partial, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(partial, directory / LATENTS)
    fsync_dir(directory)


def _write_embeddings(directory: Path, captions: Sequence[str], text_encoder: nn.Module, tokenizer) -> None:
    distinct = [""] + sorted(set(captions) - {""})
    row = {c: i for i, c in enumerate(distinct)}
    embeddings = embed_prompts(text_encoder, tokenizer, distinct).numpy().astype(np.float16)
    for name, array in (("embeddings.npy", embeddings),
                        ("caption_index.npy", np.asarray([row[c] for c in captions], dtype=np.int32))):
        with atomic_path(directory / name) as tmp, open(tmp, "wb") as f:
            np.save(f, array)
    _write_json(directory / "captions.json", distinct)


__all__ = ["CACHE_VERSION", "LatentCache", "build_cache", "default_root", "module_digest", "open_cache",
           "text_digest", "tokenizer_digest"]
