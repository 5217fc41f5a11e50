"""binarydm as a diffusers quantizer plug-in: binarized models that ``from_pretrained`` loads binarized.

``binarydm.binarize_`` writes into a diffusers model's config

    quantization_config = {"quant_method": "binarydm", "quant_config": {...QuantConfig...}, "format_version": 1}

(and ``"excluded"``: names a ``filter_fn`` left out), so ``model.save_pretrained(d)`` and
``pipe.save_pretrained(d)`` put it into ``config.json``. diffusers reads ``quant_method`` when it loads
a model and looks the name up in its quantizer tables; :func:`register` (run by ``import binarydm``)
adds "binarydm" there. ``UNet2DModel.from_pretrained(d)``, ``UNet2DConditionModel.from_pretrained(d)``,
``DDIMPipeline.from_pretrained(d)`` and ``DiffusionPipeline.from_pretrained(d)`` then

1. build the float architecture on the ``meta`` device (diffusers does this),
2. call :meth:`BinaryDMQuantizer._process_model_before_weight_loading`: ``binarize_`` with the stored
   QuantConfig (the quantizers' scales are real tensors, the latent weights stay on ``meta``),
3. load every tensor of the file: the layers' weights and biases as diffusers loads any tensor; the
   quantizers' scales, steps and flags (``*._extra_state``) through their own modules'
   ``_load_from_state_dict`` (:meth:`BinaryDMQuantizer.create_quantized_param`), so that flags are
   restored and scales sized at calibration take the file's shape.

The output equals the saved model's bit for bit. Without ``import binarydm`` diffusers refuses such a
directory ("Unknown quantization type, got binarydm"): it never loads it as full precision.

Requirements and limits (diffusers' quantizer machinery):

- ``accelerate`` must be installed (diffusers loads quantized models with ``low_cpu_mem_usage=True``);
  :func:`binarydm.load` reads the same directory without it.
- Only checkpoints binarized by binarydm are loaded this way (``requires_calibration``): an FP model
  with ``quantization_config=BinaryDMQuantizationConfig(...)`` is refused; call ``binarize_`` and
  ``calibrate_`` instead.
- ``.half()``, ``.to(dtype)`` and ``torch_dtype=`` cast a binarized model like any model, except its latent
  weights and its quantizers' scales and steps, which stay float32 (the quantizers compute in float32 and
  hand back the model's dtype).

The hooks used (``_process_model_before_weight_loading``, ``check_if_quantized_param``,
``create_quantized_param``, the ``AUTO_QUANTIZER_MAPPING`` / ``AUTO_QUANTIZATION_CONFIG_MAPPING``
tables) exist in diffusers 0.31 to 0.42.
"""

from __future__ import annotations

import enum
import importlib
from typing import Any, Optional

import torch
from torch import nn

from ..quant.config import QuantConfig, resolve
from ..quant.layers import QUANT_LAYERS
from ..quant.convert import QUANT_FORMAT_VERSION, QUANT_METHOD, binarize_, excluded_filter

try:  # diffusers' quantizer plug-in API (0.31+)
    from diffusers.quantizers import auto as _auto
    from diffusers.quantizers.base import DiffusersQuantizer
    from diffusers.quantizers.quantization_config import QuantizationConfigMixin
except ImportError:  # pragma: no cover - older diffusers: binarydm.load still works
    _auto = None
    DiffusersQuantizer = object  # type: ignore[assignment,misc]
    QuantizationConfigMixin = object  # type: ignore[assignment,misc]


class BinaryDMMethod(str, enum.Enum):
    """diffusers reads ``quantization_config.quant_method.value``: a str Enum, like its own methods."""

    BINARYDM = QUANT_METHOD


class BinaryDMQuantizationConfig(QuantizationConfigMixin):
    """The ``quantization_config`` of a binarized model: its QuantConfig and the excluded names."""

    def __init__(self, quant_config: Any = None, format_version: int = QUANT_FORMAT_VERSION,
                 excluded: Optional[list] = None, **_: Any):
        self.quant_method = BinaryDMMethod.BINARYDM
        self.quant_config = resolve(quant_config).to_dict()
        self.format_version = int(format_version)
        if self.format_version > QUANT_FORMAT_VERSION:
            raise ValueError(f"binarydm quantization_config format_version {self.format_version}: this binarydm "
                             f"reads versions up to {QUANT_FORMAT_VERSION}; upgrade binarydm")
        self.excluded = sorted(excluded or [])

    def to_dict(self) -> dict[str, Any]:
        out = {"quant_method": QUANT_METHOD, "quant_config": dict(self.quant_config),
               "format_version": self.format_version}
        if self.excluded:
            out["excluded"] = list(self.excluded)
        return out

    to_diff_dict = to_dict  # diffusers' ConfigMixin serialises quantization configs with either

    def __repr__(self) -> str:
        return f"BinaryDMQuantizationConfig({self.to_dict()})"


class BinaryDMQuantizer(DiffusersQuantizer):
    """Rebuilds a model that ``binarize_`` converted and ``save_pretrained`` wrote."""

    # Only pre-binarized checkpoints: binarizing on the fly needs calibrate_ (activation statistics).
    requires_calibration = True
    use_keep_in_fp32_modules = False
    _requested_dtype = None

    def validate_environment(self, *args, **kwargs) -> None:
        if not self.pre_quantized:  # pragma: no cover - requires_calibration refuses earlier
            raise ValueError("binarydm quantizes with binarydm.binarize_ + calibrate_, not at load time")

    def _process_model_before_weight_loading(self, model, **kwargs):
        # The stored QuantConfig may name a quantizer of the comparison suite.
        importlib.import_module("binarydm.algorithms")
        qc = self.quantization_config
        binarize_(model, QuantConfig.from_dict(qc.quant_config), excluded_filter(qc.excluded))
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        # diffusers marks a quantized model so that .half() / .to(dtype) raise (formats that cannot be cast); a
        # binarized model casts like any model, its latent weights and quantizer scales staying float32
        # (QuantConv2d._apply, Quantizer._apply). torch_dtype= is applied here, after loading in float32.
        model.is_quantized = False
        if self._requested_dtype is not None:
            nn.Module.to(model, self._requested_dtype)  # not ModelMixin.to: its fp32-modules notice is not ours
        return model

    def check_if_quantized_param(self, model, param_value, param_name: str, state_dict, **kwargs) -> bool:
        """The quantizers' tensors go through their own modules' load path: their flags (enabled,
        initialised, bases) are extra state, not a parameter, and some algorithms' scales take their shape
        from the checkpoint (size 0 until calibrated). The quantized layers' weights and biases, and every
        diffusers module, load as diffusers loads them."""
        if param_name.endswith("._extra_state"):
            return True
        module = _owner(model, param_name)
        return module is not None and type(module).__module__.startswith("binarydm.") \
            and not isinstance(module, QUANT_LAYERS)

    def create_quantized_param(self, model, param_value, param_name: str, target_device, *args, **kwargs):
        module_name, _, leaf = param_name.rpartition(".")
        module = model.get_submodule(module_name)
        current = None if leaf == "_extra_state" else getattr(module, leaf, None)
        if isinstance(current, torch.Tensor) and current.is_meta:  # built from the meta model: materialise
            from accelerate.utils import set_module_tensor_to_device

            set_module_tensor_to_device(model, param_name, target_device or "cpu", value=param_value)
            return
        missing: list = []
        unexpected: list = []
        errors: list = []
        module._load_from_state_dict({param_name: param_value}, module_name + ".", {}, False, missing, unexpected,
                                     errors)
        if errors:
            raise RuntimeError(f"{param_name}: {errors[0]}")

    def check_quantized_param_shape(self, *args, **kwargs) -> bool:
        return True

    def update_torch_dtype(self, torch_dtype):
        # Load every tensor at its file's float32: a latent weight rounded to fp16 on the way in would change
        # the binarized weight (a packed file's latents lie one float32 ulp from a scale). The requested dtype
        # is applied after loading, as .to(dtype) applies it.
        self._requested_dtype = torch_dtype
        return None

    @property
    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return True

    @property
    def is_compileable(self) -> bool:
        return True


def _owner(model, param_name: str):
    try:
        return model.get_submodule(param_name.rpartition(".")[0])
    except AttributeError:
        return None


def register() -> bool:
    """Add "binarydm" to diffusers' quantizer tables (idempotent); False where diffusers has none."""
    if _auto is None:  # pragma: no cover
        return False
    _auto.AUTO_QUANTIZER_MAPPING[QUANT_METHOD] = BinaryDMQuantizer
    _auto.AUTO_QUANTIZATION_CONFIG_MAPPING[QUANT_METHOD] = BinaryDMQuantizationConfig
    return True


def is_binarized_config(config: Any) -> bool:
    """Whether a model config (mapping) carries binarydm's ``quantization_config``."""
    qc = dict(config).get("quantization_config") if config is not None else None
    if qc is None:
        return False
    method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    return getattr(method, "value", method) == QUANT_METHOD


__all__ = ["BinaryDMMethod", "BinaryDMQuantizationConfig", "BinaryDMQuantizer", "is_binarized_config", "register"]
