"""binarydm: binarize diffusion models (BinaryDM, W1A4) and train them with Lightning.

The public API::

    import binarydm
    binarydm.binarize_(unet, "w1a4")          # swap layers in place, initialise weight scales
    binarydm.calibrate_(unet, x_t, t)         # initialise activation steps from one batch
    print(binarydm.summary(unet, x_t, t))     # bits, storage and OPs per layer
    unet.save_pretrained(d)                   # config.json records binarydm's quantization_config
    unet = binarydm.load(d)                   # or UNet2DModel.from_pretrained(d): binarized again

``import binarydm`` registers the "binarydm" quantizer with diffusers (``binarydm.packing.hf``), so
``from_pretrained`` of a binarized model or pipeline comes back binarized.
"""

from .quant import QuantConfig, binarize_, calibrate_, set_quant_state_, summary
from . import algorithms  # noqa: E402,F401  (registers the comparison-suite quantizers and surrogates)
from .packing import load_packed  # noqa: E402
from .packing.loading import load  # noqa: E402

__version__ = "0.1.0"
__all__ = ["QuantConfig", "binarize_", "calibrate_", "load", "load_packed", "set_quant_state_", "summary", "__version__"]
