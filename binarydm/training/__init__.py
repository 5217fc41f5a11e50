"""The training room: BinaryDM quantization-aware training with Lightning.

``DiffusionQAT`` (the LightningModule: noise prediction + LRM + EBB penalty), ``LRM`` (low-rank
representation mimicking), schedules as callbacks (``ProgressiveInit``, ``EBBTransition``, ``EMA``,
``SampleGrid``), data modules, teacher loading, the OmegaConf run configuration and ``run``.
Lightning is imported here, never by ``binarydm.quant``.
"""

from .callbacks import EMA, EBBTransition, ProgressiveInit, ProgressiveSchedule, SampleGrid, ddim_sample
from .config import ConfigError, load_config
from .data import DataConfig, DatasetNotFoundError, DiffusionDataModule
from .lrm import LRM, FeatureTap, lrm_block_names
from .module import DiffusionQAT, LossConfig, OptimConfig
from .runner import build, export_student, load_student, run
from .teacher import TeacherNotFoundError, load_unet

__all__ = [
    "EMA", "EBBTransition", "ProgressiveInit", "ProgressiveSchedule", "SampleGrid", "ddim_sample",
    "ConfigError", "load_config", "DataConfig", "DatasetNotFoundError", "DiffusionDataModule", "LRM",
    "FeatureTap", "lrm_block_names", "DiffusionQAT", "LossConfig", "OptimConfig", "build", "export_student",
    "load_student", "run", "TeacherNotFoundError", "load_unet",
]
