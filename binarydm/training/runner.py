"""One training run from a resolved config: build, fit, export, report.

    teacher (model.pretrained or model.config) -> student = copy -> binarize_ -> all quantizers off
    -> DiffusionQAT + callbacks -> Trainer.fit -> <run>/student/ + <run>/report.md

Run directory ``<out_dir>/<name>/``: config.yaml (resolved), checkpoints/ (step=N.ckpt and last.ckpt),
csv/ and tensorboard/ logs, samples/step_NNNNNNN.png, student/ (exported), report.md.

Nothing is written before every check of ``training.validate`` has passed (config values, the UNet
against the data, the data itself, the resume checkpoint); the run directory is then held by this run
alone (``guards.claim_run_dir``), checkpoints are written atomically (``guards.AtomicCheckpointIO``) and
a diverged run stops without exporting anything (``guards.DivergenceGuard``).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..console import Phases, say, training_bar
from ..errors import UsageError, one_line
from ..packing.files import atomic_write, write_checksums
from ..packing.student import save_student_dir
from ..latent.components import Components, load_components
from ..packing.loading import load_student, quant_config_from, run_unet_config
from ..packing.pipeline import save_pipeline_dir
from ..quant.config import QuantConfig
from ..quant.convert import binarize_
from .callbacks import (
    EMA,
    Calibrate,
    EBBTransition,
    ProgressiveInit,
    SampleGrid,
    all_quantizers_off_,
)
from . import autoencoder
from .config import RunConfig, save_config, structured
from .data import DiffusionDataModule
from .final_eval import evaluate_run, report_lines
from .guards import (
    AtomicCheckpointIO,
    DivergenceError,
    DivergenceGuard,
    check_run_dir_free,
    claim_run_dir,
    first_non_finite,
    launcher_rank_zero,
)
from .module import DiffusionQAT
from .schedules import QuantScheduleCallback
from .threads import RecordThreads, choose_threads
from .teacher import hub_unavailable, load_scheduler, load_unet, resolve_local
from .validate import check_config, check_data, check_model, check_resume


def quant_config_of(cfg: DictConfig) -> Optional[QuantConfig]:
    """None for full-precision training (``quant: none``); else the algorithm or preset ``quant`` names
    (``binarydm.algorithms.preset``) with ``quant_options``: QuantConfig fields and the algorithm's own
    parameters (``quant=biper quant_options={omega: 10}``)."""
    return quant_config_from(cfg.quant, OmegaConf.to_container(cfg.quant_options))


def _scheduler(cfg: DictConfig, latent: bool = False):
    pretrained = cfg.model.pretrained if cfg.model.config is None else None
    fallback = {k: v for k, v in OmegaConf.to_container(cfg.scheduler).items() if v is not None}
    # Latents are no images in [-1, 1]: the samplers must not clip their x_0 estimate (LDM, Stable Diffusion).
    fallback.setdefault("clip_sample", not latent)
    if pretrained and resolve_local(pretrained) is None:
        from diffusers import DDPMScheduler

        for subfolder in (None, "scheduler"):  # a model repository, or a pipeline's scheduler/
            try:
                return DDPMScheduler.from_pretrained(pretrained, subfolder=subfolder)
            except Exception:  # noqa: BLE001 - none there / offline: the config's schedule
                continue
        return DDPMScheduler(**fallback)
    return load_scheduler(pretrained, fallback)


@dataclass
class Built:
    module: DiffusionQAT
    data: DiffusionDataModule
    callbacks: list
    quant: Optional[QuantConfig]
    run_dir: Path
    progressive: Optional[ProgressiveInit] = None
    samples: Optional[SampleGrid] = None
    ema: Optional[EMA] = None
    components: Optional[Components] = None


def data_module(cfg: DictConfig, components: Optional[Components] = None) -> DiffusionDataModule:
    return DiffusionDataModule(OmegaConf.to_object(cfg.data), seed=cfg.seed, components=components)


def components_of(cfg: DictConfig) -> Components:
    """The frozen parts around the UNet (``binarydm.latent``): the autoencoder whose latents are the data, the
    text encoder of a text-conditioned UNet; none for a pixel-space UNet or an autoencoder run."""
    model_config = OmegaConf.to_container(cfg.model.config) if cfg.model.config is not None else None
    if autoencoder.is_autoencoder_config(model_config):
        return Components()
    pretrained = cfg.model.pretrained if cfg.model.config is None else None
    try:
        unet_config = run_unet_config(cfg)
    except ValueError:
        if pretrained and resolve_local(pretrained) is None:  # a hub id that cannot be read here
            raise hub_unavailable(pretrained) from None
        unet_config = None
    try:
        return load_components(pretrained, unet_config, cfg.model.autoencoder, cfg.model.text_encoder)
    except (OSError, ValueError, TypeError) as err:
        if isinstance(err, UsageError):
            raise
        raise UsageError(f"model.pretrained={pretrained}: cannot load the pipeline's frozen components "
                         f"({type(err).__name__}: {one_line(err)[:200]})") from None


def _build_autoencoder_run(cfg: DictConfig, data: DiffusionDataModule, run_dir: Path) -> Built:
    """An autoencoder run (``model.config._class_name``: AutoencoderKL or VQModel): the latent space of a
    latent pipeline, trained on the images (``training.autoencoder``)."""
    try:
        ae = autoencoder.build_autoencoder(OmegaConf.to_container(cfg.model.config))
    except ValueError as err:
        raise UsageError(one_line(err)) from None
    module = autoencoder.AutoencoderTraining(ae, OmegaConf.to_object(cfg.autoencoder), OmegaConf.to_object(cfg.optim),
                                             seed=cfg.seed)
    samples = autoencoder.ReconstructionGrid(run_dir / "samples", cfg.sample.num_images)
    return Built(module, data, [DivergenceGuard(lr=cfg.optim.lr), samples], None, run_dir, samples=samples)


def build(cfg: Union[DictConfig, RunConfig], data: Optional[DiffusionDataModule] = None,
          components: Optional[Components] = None) -> Built:
    """The LightningModule, data module (``data``, or a new one) and callbacks of a run (nothing is
    trained yet); ``components``: the frozen parts of a latent pipeline (default: ``data``'s, else found
    from the config)."""
    cfg = structured(cfg)
    threads = choose_threads(cfg.num_threads, cfg.resume)
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    run_dir = Path(cfg.out_dir) / cfg.name
    quant = quant_config_of(cfg)
    model_config = OmegaConf.to_container(cfg.model.config) if cfg.model.config is not None else None
    if autoencoder.is_autoencoder_config(model_config):
        return _build_autoencoder_run(cfg, data if data is not None else data_module(cfg), run_dir)
    if components is None:
        components = data.components if data is not None and data.components is not None else components_of(cfg)
    subfolder = cfg.model.subfolder
    if subfolder is None and components.pipeline_class is not None and components.pipeline_dir is None:
        subfolder = "unet"  # a hub pipeline
    try:
        fp = load_unet(cfg.model.pretrained, subfolder, model_config)
    except (ValueError, TypeError) as err:  # a model.config diffusers rejects (TeacherNotFoundError passes)
        raise UsageError(one_line(err)) from None
    except OSError as err:
        if type(err).__name__ == "TeacherNotFoundError":
            raise
        raise UsageError(f"model.pretrained={cfg.model.pretrained}: cannot load it as a diffusers UNet "
                         f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    scheduler = _scheduler(cfg, components.latent)

    teacher = None
    student = fp
    if quant is not None:
        teacher = fp
        student = copy.deepcopy(fp)
        binarize_(student, quant)
    if cfg.model.gradient_checkpointing:
        student.enable_gradient_checkpointing()  # memory for compute: the same loss (tests/test_latent.py)
    student.train()

    ebb_tau = cfg.ebb.tau if (cfg.ebb.enabled and quant is not None) else 0.0
    # optim.total_steps null: the cosine ends at the trainer's max_steps (DiffusionQAT reads it there).
    module = DiffusionQAT(student, scheduler, teacher, loss=OmegaConf.to_object(cfg.loss),
                          optim=OmegaConf.to_object(cfg.optim), seed=cfg.seed, ebb_tau=ebb_tau)
    data = data if data is not None else data_module(cfg, components)

    # First, so that a diverged step stops before any other callback (or the checkpoint) sees it.
    callbacks: list = [DivergenceGuard(lr=cfg.optim.lr)]
    progressive = None
    if quant is not None:
        schedule = OmegaConf.to_object(cfg.progressive)
        if schedule.enabled:
            all_quantizers_off_(student)
            progressive = ProgressiveInit(schedule)
            callbacks.append(progressive)
        else:
            callbacks.append(Calibrate())
        if cfg.ebb.enabled:
            callbacks.append(EBBTransition(cfg.ebb.transition_step))
        callbacks.append(QuantScheduleCallback())  # ReCU's tau, FDA's alpha_t and n, BiPer's stages
    ema = None
    if cfg.ema.enabled:
        start = cfg.ema.start_step
        if progressive is not None:
            start = max(start, progressive.last_event_step(student) + 1)
        ema = EMA(cfg.ema.decay, start)
        callbacks.append(ema)
    samples = SampleGrid(run_dir / "samples", cfg.sample.num_images, cfg.sample.num_inference_steps,
                         cfg.sample.seed, components=components, prompts=list(cfg.sample.prompts) or None,
                         guidance_scale=float(cfg.sample.guidance_scale))
    callbacks.append(samples)
    return Built(module, data, callbacks, quant, run_dir, progressive, samples, ema, components)


def _strategy(cfg: DictConfig, quantized: bool):
    name = cfg.trainer.strategy
    if quantized and name in ("ddp", "ddp_spawn", "ddp_fork"):
        from lightning.pytorch.strategies import DDPStrategy

        # Quantizer scales of groups not yet switched on (and attention steps until the end of the
        # warm-up) get no gradient: DDP must be told to expect unused parameters.
        start = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_fork": "fork"}[name]
        return DDPStrategy(find_unused_parameters=True, start_method=start)
    return name


def native_bf16(accelerator: str) -> bool:
    """Whether the device computes bfloat16 natively: a CUDA GPU that supports it, or a CPU with AMX or AVX512-BF16
    (elsewhere bf16 is emulated, slower than float32)."""
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    if accelerator in ("cpu", "auto"):
        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def resolve_precision(precision, accelerator: str) -> str:
    """``trainer.precision``; ``auto``: ``bf16-mixed`` where the device computes bf16 natively (the quantizers'
    scales, steps and rounding stay float32 under autocast), else ``32-true``."""
    if str(precision) != "auto":
        return str(precision)
    return "bf16-mixed" if native_bf16(str(accelerator)) else "32-true"


def make_trainer(cfg: DictConfig, built: Built, extra_callbacks: Sequence = ()) -> L.Trainer:
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    t = OmegaConf.to_object(cfg.trainer)  # a TrainerConfig: plain values (devices may be a list)
    ckpt = ModelCheckpoint(dirpath=built.run_dir / "checkpoints", filename="step={step}",
                           auto_insert_metric_name=False, every_n_train_steps=t.checkpoint_every_n_steps,
                           save_top_k=-1, save_last=True, enable_version_counter=False)
    loggers = [CSVLogger(built.run_dir, name="csv"), TensorBoardLogger(built.run_dir, name="tensorboard")]
    val_interval = t.val_check_interval
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return L.Trainer(
            accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
            strategy=_strategy(cfg, built.quant is not None), precision=resolve_precision(t.precision, t.accelerator),
            max_steps=t.max_steps,
            val_check_interval=val_interval, check_val_every_n_epoch=None, limit_val_batches=t.limit_val_batches,
            gradient_clip_val=t.gradient_clip_val, log_every_n_steps=t.log_every_n_steps,
            enable_progress_bar=t.enable_progress_bar, deterministic=t.deterministic,
            callbacks=[*built.callbacks, *extra_callbacks, RecordThreads(), ckpt,
                       *([training_bar()] if t.enable_progress_bar else [])], logger=loggers,
            default_root_dir=built.run_dir,
            use_distributed_sampler=False, num_sanity_val_steps=0, enable_model_summary=False,
            # Lightning's own save goes through fsspec's temporary file in $TMPDIR (see guards.py).
            plugins=[AtomicCheckpointIO()],
        )
    except (MisconfigurationException, ValueError, TypeError, RuntimeError, ImportError) as err:
        # accelerator=gpu without one, devices=3 on a 2-device machine, an unknown strategy, ...
        raise UsageError(f"trainer settings (trainer.accelerator={t.accelerator}, trainer.devices={t.devices}, "
                         f"trainer.strategy={t.strategy}, trainer.precision={t.precision}): {one_line(err)}") from None


# ---- export ---------------------------------------------------------------------------------
def export_student(student: nn.Module, quant: Optional[QuantConfig], scheduler, out_dir,
                   components: Optional[Components] = None) -> Path:
    """The student directory: a diffusers model directory, ``config.json`` (the UNet config with binarydm's
    ``quantization_config``), ``diffusion_pytorch_model.safetensors`` (the state dict: latent weights,
    scales, LSQ steps, quantizer flags), ``scheduler_config.json`` and ``SHA256SUMS``. It is what
    ``binarydm.load``, ``binarydm.sample``, ``binarydm.export`` and, with ``import binarydm``,
    ``UNet2DModel.from_pretrained`` / ``UNet2DConditionModel.from_pretrained`` read.

    A full-precision model is saved with ``save_pretrained`` (a plain diffusers model directory). With the
    ``components`` of a latent pipeline the student directory is the whole pipeline (``packing.pipeline``):
    that directory in ``unet/``, beside the frozen autoencoder, text encoder and tokenizer.
    """
    if components is not None and components.latent:
        return save_pipeline_dir(out_dir, components, lambda d: export_student(student, quant, scheduler, d),
                                 type(student).__name__, dict(scheduler.config))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if quant is None:
        # diffusers writes its own files (not atomically); the checksums below then cover what it wrote.
        scheduler.save_pretrained(out)
        student.save_pretrained(out, safe_serialization=True)
        write_checksums(out, ["config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json"])
        return out
    # The config binarize_ recorded (its excluded names too); quant is the same QuantConfig.
    return save_student_dir(student, None, None, out, scheduler_config=scheduler)


# ---- the whole run ----------------------------------------------------------------------------
def _last_metrics(trainer: L.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}


def describe_run(cfg: DictConfig, built: Built, trainer: L.Trainer) -> str:
    """The run in one line: what is trained, how long, where."""
    model = "a fresh model" if cfg.model.config is not None else cfg.model.pretrained
    what = f"{cfg.quant} student of {model}" if built.quant is not None else f"full-precision training of {model}"
    device = f"{trainer.num_devices} x {type(trainer.accelerator).__name__.replace('Accelerator', '').lower()}"
    return (f"{built.run_dir}: {what}, {cfg.trainer.max_steps} steps of batch {cfg.data.batch_size} on {device} "
            f"({torch.get_num_threads()} thread(s), precision {trainer.precision})")


def write_report(path: Path, cfg: DictConfig, built: Built, trainer: L.Trainer, wall: float,
                 student_dir: Optional[Path], evaluation: Optional[dict] = None,
                 phases: Optional[Phases] = None) -> Path:
    m = _last_metrics(trainer)
    fresh = (cfg.model.config or {}).get("_class_name") or "UNet2DModel"
    latent = built.components is not None and built.components.latent
    ckpts = sorted((built.run_dir / "checkpoints").glob("*.ckpt"))
    lines = [
        f"# Run `{cfg.name}`",
        "",
        f"- quantization: {built.quant.to_dict() if built.quant else 'none (full precision)'}",
        f"- model: {cfg.model.pretrained if cfg.model.config is None else f'fresh {fresh} from model.config'}",
        *([f"- latent pipeline: {built.components.describe()}"] if latent else []),
        f"- data: {cfg.data.name} ({cfg.data.root}), batch {cfg.data.batch_size}",
        f"- steps: {trainer.global_step} (max_steps {cfg.trainer.max_steps})",
        f"- wall time of this invocation: {wall:.1f} s ({wall / max(trainer.global_step, 1):.3f} s/step overall)",
        "",
        "## Final losses",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {v:.6g} |" for k, v in sorted(m.items())],
        "",
        "## Outputs",
        "",
        f"- resolved config: {built.run_dir / 'config.yaml'}",
        f"- checkpoints: {', '.join(str(c) for c in ckpts) or 'none'}",
        f"- sample grids: {', '.join(str(p) for p in built.samples.written) or 'none'}",
        f"- logs: {built.run_dir / 'csv'}, {built.run_dir / 'tensorboard'}",
        f"- exported student: {student_dir or 'not exported'}",
    ]
    if built.progressive is not None:
        lines += ["", "## Progressive initialisation", "",
                  *[f"- step {s}: {name}" for s, name in built.progressive.history]]
    if evaluation and "autoencoder" in evaluation:
        lines += autoencoder.report_lines(evaluation["autoencoder"])
    elif evaluation:
        lines += report_lines(evaluation, cfg)
    if phases is not None and phases.seconds:
        lines += ["", "## Time", "", "| phase | seconds |", "|---|---|",
                  *[f"| {name} | {sec:.1f} |" for name, sec in phases.seconds.items()]]
    with atomic_write(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def prepare(cfg: Union[DictConfig, RunConfig], extra_callbacks: Sequence = ()) -> tuple[Built, L.Trainer]:
    """Every check, the model, the data and the trainer: all that can fail on a bad input, before the
    run directory is touched."""
    cfg = structured(cfg)
    check_config(cfg)
    components = components_of(cfg)  # the frozen autoencoder / text encoder: latents are made with them
    data = data_module(cfg, components)
    check_model(cfg, None, components)  # the UNet's config against the autoencoder, before any encoding
    check_data(cfg, data)  # the data set is read before the model is loaded: the cheaper failure first
    built = build(cfg, data, components)
    if isinstance(built.module, DiffusionQAT):  # an autoencoder run was checked from its config
        check_model(cfg, built.module.student, components)
    check_resume(cfg, built.module)
    return built, make_trainer(cfg, built, extra_callbacks)


def run(cfg: Union[DictConfig, RunConfig], extra_callbacks: Sequence = (), overwrite: bool = False) -> dict[str, Any]:
    """Train as ``cfg`` (``config.load_config``'s result, or a :class:`config.RunConfig`) says; returns the
    trainer, module and output paths.

    ``overwrite`` (or ``cfg.overwrite``): a run directory holding an earlier run's results is cleared
    instead of refused. A diverged run raises :class:`guards.DivergenceError` and exports nothing.
    """
    start = time.time()
    cfg = structured(cfg)
    overwrite = overwrite or cfg.overwrite
    phases = Phases(verbose=launcher_rank_zero())
    if launcher_rank_zero():  # a refused directory is said at once, before the model and data are loaded
        check_config(cfg)
        check_run_dir_free(Path(cfg.out_dir) / cfg.name, cfg.resume, overwrite)
    with phases("setup"):
        built, trainer = prepare(cfg, extra_callbacks)
    phases.verbose = trainer.is_global_zero
    with claim_run_dir(built.run_dir, cfg.resume, overwrite):
        if trainer.is_global_zero:
            # The action, not a setting of the run: running its config.yaml again must not clear it.
            saved = cfg.copy()
            saved.overwrite = False
            save_config(saved, built.run_dir / "config.yaml")
        with phases("training", f"training {describe_run(cfg, built, trainer)}"):
            trainer.fit(built.module, datamodule=built.data, ckpt_path=cfg.resume)
        student_dir = report = evaluation = None
        if trainer.is_global_zero:
            # The final sample grid, when the last step did not fall on a validation.
            if not built.samples.written or not built.samples.written[-1].name.endswith(
                    f"{trainer.global_step:07d}.png"):
                built.samples.on_validation_epoch_end(trainer, built.module)
            if cfg.export and isinstance(built.module, autoencoder.AutoencoderTraining):
                ae = built.module.autoencoder
                student_dir = built.run_dir / "student"
                evaluation = {"autoencoder": autoencoder.export_autoencoder(
                    ae, autoencoder.training_images(built.data, cfg.autoencoder.scale_images), student_dir)}
                evaluation["autoencoder"]["rfid"] = autoencoder.reconstruction_fid(cfg, ae, built.run_dir)
            elif cfg.export:
                student = built.module.student
                ctx = built.ema.applied(student) if built.ema is not None else _null()
                with ctx:
                    bad = first_non_finite(student)
                    if bad is not None:  # e.g. the EMA average of a run that diverged between checks
                        raise DivergenceError(f"training diverged by step {trainer.global_step}: {bad} of the "
                                              "model to export is not finite; lower optim.lr; nothing was exported")
                    with phases("export", f"exporting the student to {built.run_dir / 'student'}"):
                        student_dir = export_student(student, built.quant, built.module.noise_scheduler,
                                                     built.run_dir / "student", built.components)
            if evaluation is None and student_dir is not None and (cfg.eval.packed or cfg.eval.fid_samples > 0):
                models = "the teacher and the student" if built.module.teacher is not None else "the model"
                what = f"FID@{cfg.eval.fid_samples} of {models}" if cfg.eval.fid_samples > 0 else "the packed checkpoint"
                with phases("evaluation", f"evaluating: {what}"):
                    evaluation = evaluate_run(cfg, built.module.teacher, student_dir, built.run_dir,
                                              dict(built.module.noise_scheduler.config), built.components,
                                              built.samples.resolve_prompts(built.data))
                if "fid" in evaluation:
                    say(f"FID@{cfg.eval.fid_samples}: "
                        + ", ".join(f"{k} {v['fid']:.2f}" for k, v in evaluation["fid"].items()))
            if cfg.report:
                report = write_report(built.run_dir / "report.md", cfg, built, trainer, time.time() - start,
                                      student_dir, evaluation, phases)
            say(phases.summary())
    return {"trainer": trainer, "module": built.module, "built": built, "run_dir": built.run_dir,
            "student_dir": student_dir, "report": report, "evaluation": evaluation if trainer.is_global_zero else None}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


__all__ = ["build", "make_trainer", "prepare", "run", "export_student", "load_student", "quant_config_of", "write_report"]
