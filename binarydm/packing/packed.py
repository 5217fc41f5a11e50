"""The packed 1-bit checkpoint: one safetensors file that rebuilds the fake-quantized model exactly.

What is stored, per tensor of the binarized model's state dict:

* An enabled LMB weight (BinaryDM's binarizer, ``w_bi = s1 sign(w) + s2 sign(w - s1 sign(w))``):
  one bit-plane per basis, ``b_k = 1`` for ``+1`` and ``0`` for ``-1``, 8 bits per byte, in the
  row-major order of the weight, least significant bit first (``<name>.weight.__bits{k}``, uint8).
  The scales ``s1``, ``s2`` stay in the state dict as float32 (one per output channel).
* An enabled XNOR-family weight (``XnorWeight``: XNOR-Net, DoReFa, Bi-Real, ReActNet, and BiDM's W1A1
  weights), ``a_w sign(w)``: one bit-plane as above (``<name>.weight.__bits0``) and the per-channel scale
  ``a_w`` as float32 (``<name>.weight.__scale``). The loaded layer uses that stored scale
  (``XnorWeight.stored_scale``) rather than mean|w'| of the rebuilt latent weight, whose float mean of equal
  magnitudes rounds away from ``a_w`` in most channels.
* An enabled LSQ weight with at most 8 bits (the kept layers at ``keep_bits=8``, or ``weight=lsq``):
  the integer codes ``round(clamp(w / a, Qn, Qp))`` as int8 (``<name>.weight.__codes``); the
  per-channel step ``a`` stays in the state dict.
* Everything else (biases, norms, embeddings, activation steps, quantizer flags, layers kept at full
  precision, weights of quantizers this file does not know): unchanged, at its own dtype (float32 for
  a float32 model). float16 would halve these bytes but changes the model's output; the file must
  reproduce the fake-quantized model bit for bit, so it keeps them as they are.

The file never stores the latent full-precision weight of a packed layer: :func:`load_packed`
rebuilds the model with :func:`binarydm.binarize_`, then writes into each packed layer a latent
weight ``w'`` chosen so that the layer's own quantizer maps it to exactly the stored value
(:func:`lmb_latent`, :func:`lsq_latent`), and loads every other tensor as saved. Nothing is
re-initialised or calibrated after the load; the output is ``torch.equal`` to the exported model's.
(Training can resume from a packed file, but from ``w'`` rather than the original latent weights.)

Container (format version 2): one safetensors tensor, ``payload`` (uint8), holds every tensor above
back to back in sorted-name order; the header's ``index`` lists (name, dtype, shape) of each, as
zlib-compressed JSON (base64). Version 1 stored one safetensors tensor per name: its header (one
JSON entry per tensor, about 950 on the CIFAR-10 UNet) was 100 kB, 2 % of the file; the compressed
index is a tenth of that. Version 1 files are still read.

Metadata (safetensors header, strings): ``format`` (``binarydm-packed``), ``format_version``,
``quant_config`` and ``unet_config`` (JSON), ``layers`` (compressed JSON like ``index``: how each
packed weight is stored, ``lmb1`` / ``lmb2`` bit-planes, ``lmb1z`` one plane and an all-zero s2 left
out, ``xnor`` one plane and the stored scale, ``lsq<b>`` int8 codes; the shapes come from the model that :func:`load_packed` rebuilds),
``index``,
``digest`` (SHA-256 over every tensor's name, dtype, shape and bytes), ``digest_all`` (the same and
every other metadata entry: a flipped byte anywhere in the payload, the QuantConfig, the UNet config,
the layer records or the noise schedule is caught on load; files written before it existed carry only
``digest`` and are checked on their tensors only), and optionally ``scheduler_config`` (JSON) for
sampling.

Metadata ``latent_pipeline`` (the class of the latent pipeline the UNet belongs to, where it does) tells
``binarydm.sample`` that the UNet's outputs are latents. The file is written atomically (``packing.files``).
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import importlib.util
import json
import struct
import zlib
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

from ..algorithms.xnor import XnorWeight
from ..quant.config import QuantConfig, resolve
from ..quant.layers import QUANT_LAYERS
from ..quant.lmb import LMB
from ..quant.lsq import LSQ
from ..quant.ste import binary_sign
from .bits import lmb_latent, lsq_latent, pack_bits, unpack_bits
from .files import PackedFormatError, PathLike, atomic_path

FORMAT = "binarydm-packed"
FORMAT_VERSION = 2
_READABLE_VERSIONS = ("1", "2")
_DIGEST_KEYS = ("digest", "digest_all")


# ---- export ----------------------------------------------------------------------------------------
def _pack_layer(name: str, layer: nn.Module) -> Optional[tuple[dict[str, torch.Tensor], str]]:
    """The packed tensors and the layout record (``lmb1``, ``lmb2``, ``lsq<bits>``) of one quantized
    layer's weight, or None to store the weight as it is."""
    q = layer.weight_quantizer
    if q is None or not q.enabled or not q.initialized:
        return None  # the forward uses the latent weight itself: store it as it is
    w = layer.weight.detach()
    if type(q) is LMB:
        first = q.s1.detach() * binary_sign(w)
        tensors = {f"{name}.weight.__bits0": pack_bits(w >= 0)}
        if q.n_bases == 2:
            tensors[f"{name}.weight.__bits1"] = pack_bits((w - first) >= 0)
        return tensors, f"lmb{q.n_bases}"
    if isinstance(q, XnorWeight):
        return {f"{name}.weight.__bits0": pack_bits(binary_sign(w) > 0),
                f"{name}.weight.__scale": q.scale(w).detach().to(torch.float32).clone()}, "xnor"
    if type(q) is LSQ and q.bits <= 8 and q.signed:
        return {f"{name}.weight.__codes": q.codes(w).to(torch.int8)}, f"lsq{q.bits}"
    return None


def _digest(tensors: Mapping[str, torch.Tensor], metadata: Optional[Mapping[str, str]] = None) -> str:
    """SHA-256 over every tensor (name, dtype, shape, bytes) and, when given, every metadata entry but
    the digests themselves (``digest_all``: any byte that changes the loaded model is covered)."""
    h = hashlib.sha256()
    for key in sorted(metadata or {}):
        if key not in _DIGEST_KEYS:
            h.update(f"meta:{len(key)}:{key}:{len(metadata[key])}:".encode())
            h.update(metadata[key].encode())
    for key in sorted(tensors):
        t = tensors[key].contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(list(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _zjson(obj: Any) -> str:
    """JSON, zlib-compressed, base64: tensor names repeat the same block names hundreds of times."""
    return base64.b64encode(zlib.compress(json.dumps(obj, separators=(",", ":")).encode(), 9)).decode()


def _unzjson(text: str) -> Any:
    return json.loads(zlib.decompress(base64.b64decode(text)).decode())


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


def _to_payload(state: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, list]:
    """Every tensor's bytes back to back (sorted names) and the index [[name, dtype, shape], ...]."""
    names = sorted(state)
    index = [[k, str(state[k].dtype).removeprefix("torch."), list(state[k].shape)] for k in names]
    parts = [state[k].contiguous().reshape(-1).view(torch.uint8) for k in names]
    payload = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.uint8)
    return payload, index


def _from_payload(path: Path, payload: torch.Tensor, index: list) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    offset = 0
    for name, dtype_name, shape in index:
        dtype = _dtype(dtype_name)
        numel = 1
        for d in shape:
            numel *= int(d)
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        if offset + nbytes > payload.numel():
            raise PackedFormatError(f"{path}: the payload ends before tensor {name!r} (truncated or corrupted)")
        # clone: a slice at an odd byte offset cannot be viewed as a wider dtype in place
        tensors[name] = payload[offset:offset + nbytes].clone().view(dtype).reshape(shape)
        offset += nbytes
    if offset != payload.numel():
        raise PackedFormatError(f"{path}: {payload.numel() - offset} bytes of payload not described by the index "
                                "(corrupted)")
    return tensors


def _plain_config(config: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in dict(config).items():
        if k == "_pre_quantization_dtype":  # a torch.dtype diffusers adds after a quantized load
            continue
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


def _model_config(model: nn.Module, unet_config: Mapping[str, Any]) -> dict[str, Any]:
    """``unet_config`` with the model's class name (``dict(unet.config)`` lacks it: a
    UNet2DConditionModel must not come back as a UNet2DModel) and its ``quantization_config``."""
    config = dict(unet_config)
    if "_class_name" not in config and hasattr(model, "config"):
        config["_class_name"] = type(model).__name__
    recorded = getattr(model, "config", {}).get("quantization_config") if hasattr(model, "config") else None
    if recorded is not None and "quantization_config" not in config:
        config["quantization_config"] = recorded if isinstance(recorded, Mapping) else recorded.to_dict()
    return _plain_config(config)


def export_packed(
    model: nn.Module,
    unet_config: Mapping[str, Any],
    quant_config: Union[str, Mapping[str, Any], QuantConfig],
    path: PathLike,
    scheduler_config: Optional[Mapping[str, Any]] = None,
    latent_pipeline: Optional[str] = None,
) -> Path:
    """Write ``model`` (binarized by :func:`binarydm.binarize_`) as a packed safetensors file at ``path``.

    ``unet_config`` is the diffusers config of the float model (``dict(unet.config)``, with its
    ``_class_name``), ``quant_config`` the QuantConfig that binarized it. ``latent_pipeline``: the class of
    the latent pipeline the UNet belongs to (recorded, so that its latents are never taken for images).
    Returns the path.
    """
    from safetensors.torch import save_file

    cfg = resolve(quant_config)
    unet_config = _model_config(model, unet_config)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    layers: dict[str, str] = {}
    for name, layer in model.named_modules():
        if not isinstance(layer, QUANT_LAYERS):
            continue
        packed = _pack_layer(name, layer)
        if packed is None:
            continue
        tensors, record = packed
        del state[f"{name}.weight"]
        state.update({k: v.cpu() for k, v in tensors.items()})
        # A single-basis LMB never reads s2 (it is kept only so that every LMB has the same keys):
        # an all-zero s2 is rebuilt on load instead of stored.
        s2 = f"{name}.weight_quantizer.s2"
        if record == "lmb1" and not state[s2].any():
            del state[s2]
            record = "lmb1z"
        layers[name] = record
    state = {k: v.contiguous() for k, v in state.items()}
    payload, index = _to_payload(state)
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "quant_config": json.dumps(cfg.to_dict()),
        "unet_config": json.dumps(_plain_config(unet_config)),
        "layers": _zjson(layers),
        "index": _zjson(index),
    }
    if scheduler_config is not None:
        metadata["scheduler_config"] = json.dumps(_plain_config(scheduler_config))
    if latent_pipeline is not None:
        metadata["latent_pipeline"] = str(latent_pipeline)
    metadata["digest"] = _digest(state)
    metadata["digest_all"] = _digest(state, metadata)
    path = Path(path)
    # atomic: an interrupted export never leaves half a file under the final name
    with atomic_path(path) as tmp:
        save_file({"payload": payload}, str(tmp), metadata=metadata)
    return path


# ---- load ------------------------------------------------------------------------------------------
def read_packed(path: PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a packed file, checked (format, version, digest); raises PackedFormatError."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise PackedFormatError(f"{path}: no such packed checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except PackedFormatError:
        raise
    except Exception as e:  # safetensors raises its own error types for a bad header or short payload
        raise PackedFormatError(
            f"{path}: cannot read as a safetensors file (truncated or corrupted?): {e}"
        ) from e
    if metadata.get("format") != FORMAT:
        raise PackedFormatError(
            f"{path}: not a binarydm packed checkpoint (metadata format={metadata.get('format')!r}, "
            f"expected {FORMAT!r}); write one with `python -m binarydm.export`"
        )
    raw = dict(metadata)  # as stored: the digest of version 3 covers these strings
    version = metadata.get("format_version")
    if version not in _READABLE_VERSIONS:
        raise PackedFormatError(
            f"{path}: packed format version {version!r}, this binarydm reads versions {list(_READABLE_VERSIONS)}"
        )
    if version != "1":
        try:
            index = _unzjson(metadata["index"])
            metadata["layers"] = json.dumps(_unzjson(metadata["layers"]))
        except (KeyError, ValueError, zlib.error) as e:
            raise PackedFormatError(f"{path}: unreadable index or layers metadata ({e}); export it again") from e
        if set(tensors) != {"payload"}:
            raise PackedFormatError(f"{path}: a version-2 packed file holds one 'payload' tensor, found {sorted(tensors)}")
        tensors = _from_payload(path, tensors["payload"], index)
    # digest: the tensors (every version); digest_all: tensors and metadata (version 2 files written
    # since it exists; a version-1 file converted from a newer one keeps a stale digest_all: ignored).
    expected = {"digest": _digest(tensors)}
    if "digest_all" in raw and version != "1":
        expected["digest_all"] = _digest(tensors, raw)
    bad = [k for k, v in expected.items() if metadata.get(k) != v]
    if bad:
        what = "the tensor data or metadata" if bad == ["digest_all"] else "the tensor data"
        raise PackedFormatError(
            f"{path}: {what} does not match the checksum stored in the file (corrupted or edited "
            "after export); export it again"
        )
    return tensors, metadata


def packed_metadata(path: PathLike) -> dict[str, Any]:
    """The decoded metadata of a packed file (quant_config, unet_config, scheduler_config, layers)."""
    _, meta = read_packed(path)
    out: dict[str, Any] = dict(meta)
    for key in ("quant_config", "unet_config", "layers", "scheduler_config"):
        if key in meta:
            out[key] = json.loads(meta[key])
    return out


def build_model(unet_config: Mapping[str, Any], quant_config=None) -> nn.Module:
    """A binarized diffusers model of the given architecture, its float weights random.

    ``unet_config`` is a diffusers model config (``_class_name`` picks the class, UNet2DModel by
    default); its ``quantization_config`` (binarydm's, as ``binarize_`` records it) supplies the
    QuantConfig when ``quant_config`` is None, and the names a ``filter_fn`` left out.
    The global RNG is left untouched (the random initialisation is overwritten by the load anyway,
    and sampling with a seed must not depend on whether a model was loaded first).
    """
    from ..quant.convert import binarize_, excluded_filter
    from ..unets import unet_class

    if importlib.util.find_spec("binarydm.algorithms") is not None:
        # Registers the comparison suite's quantizers, which a stored QuantConfig may name.
        importlib.import_module("binarydm.algorithms")
    config = dict(unet_config)
    recorded = config.pop("quantization_config", None)
    recorded = recorded if isinstance(recorded, Mapping) else {}
    if quant_config is None:
        if "quant_config" not in recorded:
            raise ValueError("the model config holds no binarydm quantization_config and no QuantConfig was given")
        quant_config = recorded["quant_config"]
    cls = unet_class(config)
    with torch.random.fork_rng(devices=[]):
        model = cls.from_config({k: v for k, v in config.items() if k != "_pre_quantization_dtype"})
        binarize_(model, resolve(quant_config), excluded_filter(recorded.get("excluded", ())))
    return model


def _check_architecture(path: Path, model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    # A tensor of size 0 in the fresh model takes its shape from the checkpoint (scales some algorithms
    # size when they are calibrated; their _load_from_state_dict resizes them).
    wrong = sorted(k for k in set(expected) & set(state)
                   if tuple(state[k].shape) != expected[k] and 0 not in expected[k])
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensor(s) missing (first: {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensor(s) (first: {unexpected[:3]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} shape mismatch(es) (first: {k}: file {tuple(state[k].shape)}, "
                         f"model {expected[k]})")
        raise PackedFormatError(
            f"{path}: checkpoint does not match the model architecture: " + "; ".join(parts)
            + ". The file was written for a different UNet or QuantConfig"
        )


def load_packed(path: PathLike, model: Optional[nn.Module] = None) -> nn.Module:
    """Rebuild the binarized model stored in a packed file; its output equals the exported model's.

    Without ``model`` the architecture comes from the file's ``unet_config`` and ``quant_config``;
    with ``model`` (already binarized) the file is loaded into it, and a file of another
    architecture raises :class:`PackedFormatError`. The model is returned in eval mode.
    """
    path = Path(path)
    tensors, meta = read_packed(path)
    try:
        layers = json.loads(meta["layers"])
        quant_config = QuantConfig.from_dict(json.loads(meta["quant_config"]))
        unet_config = json.loads(meta["unet_config"])
    except (KeyError, ValueError, TypeError) as e:
        raise PackedFormatError(f"{path}: unreadable metadata ({e})") from e
    if model is None:
        try:
            model = build_model(unet_config, quant_config)
        except (TypeError, ValueError, KeyError) as e:  # metadata that describes no buildable model
            raise PackedFormatError(f"{path}: its unet_config / quant_config describe no model binarydm can build "
                                    f"({type(e).__name__}: {e})") from e

    try:
        state = _unpack_layers(path, model, tensors, layers)
    except (KeyError, RuntimeError) as e:  # a missing scale, or one of another shape
        raise PackedFormatError(
            f"{path}: checkpoint does not match the model architecture ({type(e).__name__}: {e}). The file was "
            "written for a different UNet or QuantConfig"
        ) from e
    state.update(tensors)
    _check_architecture(path, model, state)
    device = next(model.parameters()).device
    model.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=True)
    return model.eval()


def _unpack_layers(path: Path, model: nn.Module, tensors: dict[str, torch.Tensor],
                   layers: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """Latent weights of the packed layers (popping their packed tensors from ``tensors``)."""
    state: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    for name, record in layers.items():
        layer = modules.get(name)
        if not isinstance(layer, QUANT_LAYERS) or layer.weight_quantizer is None:
            raise PackedFormatError(
                f"{path}: checkpoint does not match the model architecture: packed layer {name!r} is not a "
                "quantized layer of the model. The file was written for a different UNet or QuantConfig"
            )
        shape = tuple(layer.weight.shape)
        numel = layer.weight.numel()
        if record.startswith("lmb"):
            s1 = tensors[f"{name}.weight_quantizer.s1"]
            planes = []
            for k in range(2 if record == "lmb2" else 1):
                packed = tensors.pop(f"{name}.weight.__bits{k}")
                if packed.numel() != (numel + 7) // 8:
                    raise PackedFormatError(
                        f"{path}: checkpoint does not match the model architecture: {name}.weight has "
                        f"{packed.numel()} packed bytes in the file, the model's weight {shape} needs "
                        f"{(numel + 7) // 8}"
                    )
                planes.append(unpack_bits(packed, numel).view(shape))
            state[f"{name}.weight"] = lmb_latent(planes[0], planes[1] if len(planes) == 2 else None, s1)
            if record == "lmb1z":
                state[f"{name}.weight_quantizer.s2"] = torch.zeros_like(s1)
        elif record == "xnor":
            if not isinstance(layer.weight_quantizer, XnorWeight):
                raise PackedFormatError(f"{path}: checkpoint does not match the model architecture: {name} is "
                                        "packed as an XNOR-family weight, the model's quantizer is "
                                        f"{type(layer.weight_quantizer).__name__}")
            packed = tensors.pop(f"{name}.weight.__bits0")
            scale = tensors.pop(f"{name}.weight.__scale")
            if packed.numel() != (numel + 7) // 8 or scale.numel() != shape[0]:
                raise PackedFormatError(
                    f"{path}: checkpoint does not match the model architecture: {name}.weight has "
                    f"{packed.numel()} packed bytes and {scale.numel()} scales in the file, the model's weight "
                    f"{shape} needs {(numel + 7) // 8} and {shape[0]}")
            plane = unpack_bits(packed, numel).view(shape)
            state[f"{name}.weight"] = torch.where(plane, scale, -scale)  # the signs; magnitudes do not matter
            layer.weight_quantizer.stored_scale = scale.clone()
        elif record.startswith("lsq"):
            codes = tensors.pop(f"{name}.weight.__codes")
            if tuple(codes.shape) != shape:
                raise PackedFormatError(
                    f"{path}: checkpoint does not match the model architecture: {name}.weight has shape "
                    f"{tuple(codes.shape)} in the file, {shape} in the model"
                )
            state[f"{name}.weight"] = lsq_latent(codes, tensors[f"{name}.weight_quantizer.step"])
        else:
            raise PackedFormatError(f"{path}: unknown packed layer kind {record!r} for {name}")
    return state


def file_sizes(path: PathLike) -> dict[str, int]:
    """Bytes of the packed file, split into header (metadata) and tensor payload."""
    path = Path(path)
    with open(path, "rb") as f:
        (header,) = struct.unpack("<Q", f.read(8))
    total = path.stat().st_size
    return {"total": total, "header": 8 + header, "payload": total - 8 - header}


__all__ = ["FORMAT", "FORMAT_VERSION", "PackedFormatError", "build_model", "export_packed", "file_sizes",
           "load_packed", "packed_metadata", "read_packed"]
