"""Every check a training run can make before it writes anything.

``runner.run`` calls, in order and before the run directory is created:

1. :func:`check_config`: ranges of every number (``optim.lr`` > 0 and finite, ``trainer.max_steps`` >= 1,
   ``data.batch_size`` >= 1, ...), names (``quant``, ``quant_options``, ``optim.schedule``, ``data.name``),
   conflicting keys (``model.pretrained`` with ``model.config``), the output location, the resume file's
   existence, and the FID evaluation's inputs;
2. :func:`check_model`: the data's image size and channels against the UNet actually loaded;
3. :func:`check_data`: the data set can be read and holds at least one batch;
4. :func:`check_resume`: the resume checkpoint can be read and was written for this architecture.

Each failure is a :class:`binarydm.errors.UsageError` with one line naming the key to change. Types
(a string where a number belongs, an unknown key) are checked earlier by ``training.config``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from ..errors import UsageError, one_line

# key -> smallest allowed value (integers)
_INT_MIN = {
    "seed": 0,
    "trainer.max_steps": 1,
    "trainer.num_nodes": 1,
    "trainer.log_every_n_steps": 1,
    "trainer.checkpoint_every_n_steps": 1,
    "data.batch_size": 1,
    "data.image_size": 1,
    "data.num_workers": 0,
    "data.val_size": 1,
    "data.synthetic_size": 1,
    "data.subset": 0,
    "optim.warmup_steps": 0,
    "optim.total_steps": 1,
    "loss.lrm_rank_divisor": 1,
    "loss.spd_grid": 1,
    "progressive.start_step": 0,
    "progressive.every": 1,
    "ebb.transition_step": 0,
    "ema.start_step": 0,
    "sample.num_images": 0,
    "sample.num_inference_steps": 1,
    "sample.seed": 0,
    "eval.fid_samples": 0,
    "eval.sample_steps": 1,
    "eval.sample_batch": 1,
    "eval.seed": 0,
    "autoencoder.scale_images": 2,
}
# key -> (low, high, low inclusive, high inclusive) for floats
_FLOAT_RANGE = {
    "optim.lr": (0.0, math.inf, False, False),
    "optim.eps": (0.0, math.inf, False, False),
    "optim.weight_decay": (0.0, math.inf, True, False),
    "optim.min_lr_ratio": (0.0, 1.0, True, True),
    "optim.shortcut_lr_scale": (0.0, math.inf, False, False),
    "loss.lrm_weight": (0.0, math.inf, True, False),
    "loss.kd_weight": (0.0, 1.0, True, True),
    "loss.spd_weight": (0.0, math.inf, True, False),
    "ebb.tau": (0.0, math.inf, True, False),
    "ema.decay": (0.0, 1.0, True, True),
    "data.caption_dropout": (0.0, 1.0, True, False),
    "sample.guidance_scale": (1.0, math.inf, True, False),
    "autoencoder.kl_weight": (0.0, math.inf, True, False),
    "autoencoder.codebook_weight": (0.0, math.inf, True, False),
}


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key)


def _interval(lo: float, hi: float, lo_in: bool, hi_in: bool) -> str:
    if hi == math.inf:
        return f"{'>=' if lo_in else '>'} {lo:g}"
    return f"in {'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}"


def _check_numbers(cfg: DictConfig) -> None:
    for key, low in _INT_MIN.items():
        value = _get(cfg, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise UsageError(f"{key}={value!r}: must be an integer >= {low}")
    for key, (lo, hi, lo_in, hi_in) in _FLOAT_RANGE.items():
        value = _get(cfg, key)
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise UsageError(f"{key}={value!r}: must be a number {_interval(lo, hi, lo_in, hi_in)}") from None
        ok = math.isfinite(v) and (v > lo or (lo_in and v == lo)) and (v < hi or (hi_in and v == hi))
        if not ok:
            hint = " (a learning rate this large diverges)" if key == "optim.lr" and v > 1 else ""
            raise UsageError(f"{key}={value!r}: must be a finite number {_interval(lo, hi, lo_in, hi_in)}{hint}")
    betas = list(_get(cfg, "optim.betas"))  # two floats: OmegaConf checked the type and the length
    if not all(0 <= b < 1 for b in betas):
        raise UsageError(f"optim.betas={betas}: must be two numbers in [0, 1), e.g. optim.betas=[0.9,0.999]")
    if _get(cfg, "optim.warmup_steps") >= _get(cfg, "trainer.max_steps") and _get(cfg, "optim.warmup_steps") > 0:
        raise UsageError(f"optim.warmup_steps={_get(cfg, 'optim.warmup_steps')}: must be smaller than "
                         f"trainer.max_steps={_get(cfg, 'trainer.max_steps')}")
    threads = _get(cfg, "num_threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise UsageError(f"num_threads={threads!r}: must be an integer >= 1 (or null for torch's default)")
    clip = _get(cfg, "trainer.gradient_clip_val")
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or not math.isfinite(clip)
                             or clip <= 0):
        raise UsageError(f"trainer.gradient_clip_val={clip!r}: must be a number > 0 (or null: no clipping)")
    for key in ("trainer.val_check_interval", "trainer.limit_val_batches"):
        value = _get(cfg, key)
        ok = (isinstance(value, int) and not isinstance(value, bool) and value >= 1) or (
            isinstance(value, float) and 0 < value <= 1)
        if not ok:
            raise UsageError(f"{key}={value!r}: must be an integer >= 1 (batches) or a fraction in (0, 1]")
    devices = _get(cfg, "trainer.devices")
    count = len(devices) if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)) else devices
    if isinstance(count, int) and not isinstance(count, bool) and count > 0:
        world = count * int(_get(cfg, "trainer.num_nodes"))
        if _get(cfg, "data.batch_size") % world:
            raise UsageError(f"data.batch_size={_get(cfg, 'data.batch_size')}: the global batch must split evenly "
                             f"between the {world} processes (trainer.devices x trainer.num_nodes)")
    guidance = _get(cfg, "eval.guidance_scale")
    if guidance is not None and (isinstance(guidance, bool) or not isinstance(guidance, (int, float))
                                 or not math.isfinite(guidance) or guidance < 1):
        raise UsageError(f"eval.guidance_scale={guidance!r}: must be a number >= 1 (1: no guidance), or null for "
                         "sample.guidance_scale")
    fid = _get(cfg, "eval.fid_samples")
    if fid == 1:
        raise UsageError("eval.fid_samples=1: FID needs a covariance, so at least 2 samples (0 turns FID off)")


def _check_names(cfg: DictConfig) -> None:
    from .config import DATASETS

    name = str(_get(cfg, "name") or "")
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise UsageError(f"name={name!r}: must be a non-empty directory name without '/' (the run directory is "
                         "<out_dir>/<name>)")
    schedule = _get(cfg, "optim.schedule")
    if schedule not in ("cosine", "constant"):
        raise UsageError(f"optim.schedule={schedule!r}: must be 'cosine' or 'constant'")
    data_name = _get(cfg, "data.name")
    if data_name not in DATASETS:
        raise UsageError(f"data.name={data_name!r}: must be one of {', '.join(DATASETS)}")
    channels = _get(cfg, "data.channels")
    if channels not in (1, 3):
        raise UsageError(f"data.channels={channels!r}: must be 1 or 3")
    features = _get(cfg, "eval.features")
    if features not in ("inception", "tiny"):
        raise UsageError(f"eval.features={features!r}: must be 'inception' or 'tiny'")
    precision = str(_get(cfg, "trainer.precision"))
    valid = ("auto", "32-true", "32", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "64", "16", "bf16",
             "transformer-engine", "transformer-engine-float16")
    if precision not in valid:
        raise UsageError(f"trainer.precision={precision!r}: must be one of auto, 32-true, 16-mixed, bf16-mixed, "
                         "16-true, bf16-true, 64-true")


def _check_taps(cfg: DictConfig) -> None:
    from .lrm import TAPS

    for key in ("loss.lrm_taps", "loss.spd_taps"):
        value = _get(cfg, key)
        if value not in TAPS:
            raise UsageError(f"{key}={value!r}: must be one of {', '.join(TAPS)}")


def _check_quant(cfg: DictConfig) -> None:
    from ..packing.loading import quant_config_from  # what runner.quant_config_of builds the run's QuantConfig with

    options = OmegaConf.to_container(cfg.quant_options) if cfg.quant_options is not None else {}
    try:
        quant_config_from(cfg.quant, options)
    except UsageError:
        raise
    except (ValueError, TypeError, KeyError) as err:
        where = f"quant={cfg.quant}" + (f" with quant_options={options}" if options else "")
        raise UsageError(f"{where}: {one_line(err)}") from None


def _check_model_keys(cfg: DictConfig) -> None:
    pretrained, config = _get(cfg, "model.pretrained"), _get(cfg, "model.config")
    if pretrained and config is not None:
        raise UsageError(
            f"model.pretrained={pretrained!r} and model.config are both set, and model.config would win silently; "
            "set model.config=null to start from model.pretrained, or model.pretrained=null for a fresh UNet"
        )
    if config is not None and dict(config).get("_class_name") in ("AutoencoderKL", "VQModel"):
        if str(_get(cfg, "quant")).lower() not in ("none", "fp", "fp32"):
            raise UsageError(f"model.config is a {config['_class_name']}: an autoencoder is trained in full precision "
                             f"(binarydm binarizes the UNet only); set quant=none")
    if pretrained and config is None and not _get(cfg, "model.autoencoder"):
        from ..latent.components import refuse_unet_of_pipeline
        from ..unets import resolve_local

        local = resolve_local(str(pretrained))
        if local is not None and not (local / "model_index.json").is_file():
            refuse_unet_of_pipeline(local, "model.pretrained")  # its latents, not pixels, are its data
    if not pretrained and config is None:
        raise UsageError("neither model.pretrained nor model.config is set: name a diffusers UNet directory or hub id "
                         "(model.pretrained=...) or give a UNet2DModel config (model.config={...})")


def _check_conflicting_keys(cfg: DictConfig) -> None:
    """Keys that another key makes meaningless, which a run would otherwise ignore without a word (the
    own-data recipe, configs/folder_*.yaml, is where they are easiest to combine), and an image-folder
    FID reference smaller than the samples it is compared with (else the run fails after training)."""
    from ..packing.loading import quant_config_from

    if _get(cfg, "model.config") is not None and _get(cfg, "model.subfolder"):
        raise UsageError(f"model.subfolder={_get(cfg, 'model.subfolder')!r} and model.config are both set; a subfolder "
                         "is read from model.pretrained, model.config builds a fresh UNet: set model.subfolder=null")
    if quant_config_from(_get(cfg, "quant")) is None:  # full precision: no quantizers to configure
        options = _get(cfg, "quant_options")
        if options:
            raise UsageError(f"quant={_get(cfg, 'quant')} trains in full precision, so quant_options="
                             f"{OmegaConf.to_container(options)} would be ignored; drop quant_options or name a "
                             "quantization (quant=w1a4, ...)")
        if _get(cfg, "ebb.enabled"):
            raise UsageError(f"ebb.enabled=true binarizes with two bases, but quant={_get(cfg, 'quant')} trains in full "
                             "precision; set ebb.enabled=false or name a quantization (quant=w1a4)")
        if _get(cfg, "loss.kd_weight"):
            raise UsageError(f"loss.kd_weight={_get(cfg, 'loss.kd_weight')} distils from a full-precision teacher, but "
                             f"quant={_get(cfg, 'quant')} trains the full-precision model itself (it has no teacher); "
                             "set loss.kd_weight=0 or name a quantization (quant=w1a4)")
    reference, samples = _get(cfg, "eval.reference"), _get(cfg, "eval.fid_samples")
    if cfg.export and samples and reference and Path(str(reference)).is_dir():
        from ..evaluation.fid import DatasetNotFound, image_files, resolve_folder

        try:
            count = len(image_files(resolve_folder(str(reference))))
        except DatasetNotFound as err:
            raise UsageError(f"eval.reference={reference}: {one_line(err)}") from None
        if count < samples:
            raise UsageError(f"eval.fid_samples={samples}: the reference folder eval.reference={reference} holds only "
                             f"{count} images (FID draws as many as the samples); lower eval.fid_samples")


def _check_paths(cfg: DictConfig) -> None:
    from ..packing.files import check_output_path

    check_output_path(Path(str(cfg.out_dir)) / str(cfg.name), "out_dir", directory=True)
    resume = _get(cfg, "resume")
    if resume is not None:
        path = Path(str(resume)).expanduser()
        if path.is_dir():
            last = path / "checkpoints" / "last.ckpt"
            hint = f" such as {last}" if last.is_file() else " (e.g. <run>/checkpoints/last.ckpt)"
            raise UsageError(f"resume={resume}: is a directory; point resume= at a checkpoint file{hint}")
        if not path.is_file():
            raise UsageError(f"resume={resume}: no such checkpoint file; point resume= at a .ckpt file "
                             "(e.g. <run>/checkpoints/last.ckpt)")
    if _get(cfg, "data.name") == "folder" and not Path(str(_get(cfg, "data.root"))).is_dir():
        raise UsageError(f"data.root={_get(cfg, 'data.root')}: no such image folder (data.name=folder)")


def _check_eval(cfg: DictConfig) -> None:
    if not cfg.export or _get(cfg, "eval.fid_samples") <= 0:
        return
    from .final_eval import reference_of

    ref = reference_of(cfg)
    if ref is not None and ref[0] not in ("fashion-mnist", "fashion_mnist", "cifar10") and not Path(ref[0]).is_dir():
        raise UsageError(f"eval.reference={ref[0]}: neither fashion-mnist, cifar10 nor an image folder")
    if ref is not None:
        # The reference images are read at the very end of a run: a missing set would fail after training.
        from ..evaluation.fid import DatasetNotFound, reference_images

        try:
            reference_images(ref[0], ref[1], num=2, root=ref[2], size=int(_get(cfg, "data.image_size")))
        except (DatasetNotFound, FileNotFoundError, ValueError) as err:
            raise UsageError(f"eval.fid_samples={_get(cfg, 'eval.fid_samples')} needs the reference images "
                             f"(eval.reference={ref[0]}, split {ref[1]}): {one_line(err)} (or set eval.fid_samples=0)"
                             ) from None
    if _get(cfg, "eval.features") == "inception" and ref is not None:
        from ..evaluation.inception import InceptionWeightsNotFound, find_weights

        try:
            find_weights(_get(cfg, "eval.weights"))
        except InceptionWeightsNotFound as err:
            raise UsageError(f"eval.fid_samples={_get(cfg, 'eval.fid_samples')} needs the Inception weights: "
                             f"{one_line(err).replace('fid.weights', 'eval.weights')} (or set eval.fid_samples=0)"
                             ) from None


def check_config(cfg: DictConfig) -> None:
    """Every check that needs no model or data (cheap: no network, no weights)."""
    _check_numbers(cfg)
    _check_names(cfg)
    _check_model_keys(cfg)
    _check_quant(cfg)
    _check_taps(cfg)
    _check_conflicting_keys(cfg)
    _check_paths(cfg)
    check_model(cfg)  # a local or given UNet config: before its weights are loaded
    _check_eval(cfg)


def _size(value: Any) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            return -1  # not square: never equal to data.image_size
        value = value[0]
    return int(value)


def _local_index(cfg: DictConfig) -> Optional[dict]:
    """The model_index.json of a local pipeline named by model.pretrained (None otherwise: a hub pipeline is
    known once its components are loaded)."""
    if cfg.model.config is not None or not cfg.model.pretrained:
        return None
    from ..latent.components import model_index
    from ..unets import resolve_local

    local = resolve_local(str(cfg.model.pretrained))
    return model_index(str(local)) if local is not None else None


def _declares_latent(cfg: DictConfig) -> bool:
    """Whether the run is in a latent space (model.autoencoder, or a pipeline with vae/ or vqvae/)."""
    from ..latent.components import autoencoder_slot

    return bool(_get(cfg, "model.autoencoder")) or autoencoder_slot(_local_index(cfg)) is not None


def _declares_text(cfg: DictConfig) -> bool:
    """Whether the run has a text encoder (model.text_encoder, or a pipeline with text_encoder/)."""
    index = _local_index(cfg)
    return bool(_get(cfg, "model.text_encoder")) or bool(index and "text_encoder" in index)


def _check_unet_config(cfg: DictConfig, config: dict, components=None) -> None:
    from ..unets import needs_text

    source = f"model.pretrained={cfg.model.pretrained}" if cfg.model.config is None else "model.config"
    latent = components.latent if components is not None else _declares_latent(cfg)
    text = components.text if components is not None else _declares_text(cfg)
    _check_condition(cfg, config, source, text)
    if needs_text(config) and not latent:
        raise UsageError(f"{source}: text conditioning is trained in latent space here (a Stable Diffusion-like "
                         "pipeline): the pipeline needs an AutoencoderKL (vae/) too, or set model.autoencoder=DIR")
    if latent:  # sizes and channels are the autoencoder's business: Components.check_unet
        if components is not None:
            components.check_unet(config, int(cfg.data.image_size), int(cfg.data.channels), source)
        return
    size = _size(config.get("sample_size"))
    image_size = int(cfg.data.image_size)
    if size is not None and size != image_size:
        raise UsageError(f"data.image_size={image_size} does not match the UNet's sample_size={size} ({source}); "
                         f"set data.image_size={size} or use a UNet built for {image_size}-pixel images")
    channels = int(cfg.data.channels)
    for attr in ("in_channels", "out_channels"):
        have = config.get(attr, 3)  # UNet2DModel's default
        if have is not None and int(have) != channels:
            raise UsageError(f"data.channels={channels} does not match the UNet's {attr}={have} ({source}); set "
                             f"data.channels={have} or use a UNet with {attr}={channels}")


def _check_condition(cfg: DictConfig, config: dict, source: str, text: bool = False) -> None:
    """A class-conditional UNet needs data.labels=true, an unconditional one must not get labels, and a
    text-conditioned UNet (Stable Diffusion) needs its text encoder (``text``) and takes no labels."""
    from ..unets import needs_text, num_classes

    labels = bool(OmegaConf.select(cfg, "data.labels", default=False))
    classes = num_classes(config)
    if needs_text(config):
        if not text:
            raise UsageError(f"{source}: a UNet2DConditionModel conditioned on text (encoder_hidden_states of "
                             f"cross_attention_dim {config.get('cross_attention_dim', 1280)}) needs its text encoder: "
                             "point model.pretrained at its pipeline (with text_encoder/ and tokenizer/) or set "
                             "model.text_encoder=DIR")
        if labels:
            raise UsageError(f"data.labels=true, but the UNet ({source}) is conditioned on text (captions); set "
                             "data.labels=false")
        return
    if _get(cfg, "data.caption_dropout"):
        raise UsageError(f"data.caption_dropout={_get(cfg, 'data.caption_dropout')}: the UNet ({source}) takes no "
                         "text; set data.caption_dropout=0")
    if classes is not None and not labels:
        raise UsageError(f"{source}: the UNet is class-conditional ({classes} classes); set data.labels=true")
    if classes is None and labels:
        raise UsageError(f"data.labels=true, but the UNet ({source}) takes no class labels; set data.labels=false or "
                         "use a class-conditional UNet (configs/tiny_cond.yaml)")
    if classes is not None and classes < 10:
        raise UsageError(f"{source}: the UNet takes {classes} classes, data.name={cfg.data.name} has 10")


def _local_unet_config(cfg: DictConfig) -> Optional[dict]:
    """The UNet's config without loading its weights: model.config, or a local directory's config.json
    (None for a hub id: checked once the model is loaded)."""
    import json

    if cfg.model.config is not None:
        return dict(OmegaConf.to_container(cfg.model.config, resolve=True))
    from .teacher import resolve_local

    path = resolve_local(str(cfg.model.pretrained))
    if path is None:
        return None
    for sub in ([cfg.model.subfolder] if cfg.model.subfolder else ["", "unet"]):
        file = path / sub / "config.json"
        if file.is_file():
            try:
                return json.loads(file.read_text())
            except (OSError, ValueError):
                return None  # the loader's own error will say what is wrong with it
    return None


def check_model(cfg: DictConfig, unet=None, components=None) -> None:
    """The data must fit the UNet: its sample_size, in_channels and out_channels (noise prediction), or,
    with a latent pipeline's ``components``, the autoencoder's latents (and the text encoder's captions).
    Without ``unet``, from the config alone (before any weights are loaded), where that is known."""
    config = dict(unet.config) if unet is not None else _local_unet_config(cfg)
    if config is None:
        return
    if config.get("_class_name") in ("AutoencoderKL", "VQModel"):  # an autoencoder run: it reads the images
        have = config.get("in_channels", 3)
        if int(have) != int(cfg.data.channels):
            raise UsageError(f"data.channels={cfg.data.channels} does not match the autoencoder's in_channels={have} "
                             f"(model.config); set data.channels={have}")
        return
    _check_unet_config(cfg, config, components)


def check_data(cfg: DictConfig, datamodule) -> None:
    """Read the data set now (the data module keeps it for fit) so that a missing or too small one fails
    before the run directory exists."""
    from ..datasets import DatasetNotFoundError

    try:
        datamodule.setup("fit")
    except DatasetNotFoundError:
        raise
    except (ValueError, OSError) as err:
        raise UsageError(f"data ({cfg.data.name}, data.root={cfg.data.root}): {one_line(err)}") from None
    n = len(datamodule.train_set)
    if n < int(cfg.data.batch_size):
        raise UsageError(f"data.batch_size={cfg.data.batch_size}: the training set ({cfg.data.name}) has only {n} "
                         "images; lower data.batch_size or add data")


def _summarize_mismatch(ckpt: dict, model: dict) -> Optional[str]:
    missing = sorted(k for k in model if k not in ckpt)
    unexpected = sorted(k for k in ckpt if k not in model)
    wrong = sorted(k for k in model if k in ckpt and tuple(ckpt[k].shape) != tuple(model[k].shape))
    if not (missing or unexpected or wrong):
        return None
    parts = []
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} tensors of another shape (first: {k}: checkpoint {tuple(ckpt[k].shape)}, "
                     f"model {tuple(model[k].shape)})")
    if missing:
        parts.append(f"{len(missing)} missing (first: {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
    return "; ".join(parts)


def check_resume(cfg: DictConfig, module) -> None:
    """The resume checkpoint is a readable Lightning checkpoint of this architecture and quantization."""
    if cfg.resume is None:
        return
    import torch

    path = Path(str(cfg.resume)).expanduser()
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError, EOFError, pickle errors, ...
        # torch's messages run to several sentences of advice: the first says what is wrong.
        first = (str(err).splitlines()[0].split(". ")[0] if str(err) else "") or type(err).__name__
        raise UsageError(f"resume={cfg.resume}: cannot read it as a checkpoint (truncated or corrupted?): {first}; "
                         "resume from an earlier checkpoint of the run") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "global_step" not in ckpt:
        raise UsageError(f"resume={cfg.resume}: not a Lightning training checkpoint (no state_dict/global_step); a "
                         "student directory or packed file cannot be resumed, use model.pretrained for a new run")
    # Tensors that are empty until fitted or calibrated (the LRM projections, per-channel activation parameters
    # such as ReActNet's and BiDM's thresholds) take their shape from the checkpoint.
    current = module.state_dict()
    lazy = {k for k, v in current.items() if v.numel() == 0 and k in ckpt["state_dict"]}
    model = {k: v for k, v in current.items() if k not in lazy}
    state = {k: v for k, v in ckpt["state_dict"].items()
             if k not in lazy and (k in model or not k.startswith("lrm."))}
    mismatch = _summarize_mismatch(state, model)
    if mismatch:
        raise UsageError(f"resume={cfg.resume}: written for another architecture or quantization than this run's "
                         f"(model.*, quant, quant_options): {mismatch}; resume with the settings of the run that "
                         "wrote it (its config.yaml)")


__all__ = ["check_config", "check_data", "check_model", "check_resume"]
