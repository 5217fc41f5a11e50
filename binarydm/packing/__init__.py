"""The packed 1-bit checkpoint (safetensors): bit-planes for binarized weights, int8 codes for 8-bit
kept layers, everything else as stored; :func:`load_packed` rebuilds the fake-quantized model exactly."""

from .format import (
    FORMAT,
    FORMAT_VERSION,
    PackedFormatError,
    build_model,
    export_packed,
    file_sizes,
    load_checkpoint,
    load_packed,
    load_student_dir,
    pack_bits,
    packed_metadata,
    read_packed,
    save_student_dir,
    unpack_bits,
)
from .hf import BinaryDMQuantizationConfig, BinaryDMQuantizer, register as _register_diffusers_quantizer

# `import binarydm` makes diffusers' from_pretrained load binarized checkpoints binarized (packing/hf.py).
_register_diffusers_quantizer()

__all__ = [
    "BinaryDMQuantizationConfig", "BinaryDMQuantizer", "FORMAT", "FORMAT_VERSION", "PackedFormatError", "build_model", "export_packed", "file_sizes",
    "load_checkpoint", "load_packed", "load_student_dir", "pack_bits", "packed_metadata", "read_packed",
    "save_student_dir",
    "unpack_bits",
]
