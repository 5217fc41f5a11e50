"""The on-disk forms, one module each: ``files`` (atomic writes, checksums), ``bits`` (bit planes),
``packed`` (the packed 1-bit checkpoint: bit-planes for binarized weights, int8 codes for 8-bit kept
layers, everything else as stored; :func:`load_packed` rebuilds the fake-quantized model exactly),
``student`` (the student directory), ``pipeline`` (the pipeline directory of a latent run); ``loading``
reads any of them, ``hf`` makes diffusers' ``from_pretrained`` read them."""

from .bits import pack_bits, unpack_bits
from .files import PackedFormatError
from .packed import (FORMAT, FORMAT_VERSION, build_model, export_packed, file_sizes, load_packed, packed_metadata,
                     read_packed)
from .student import load_checkpoint, load_student_dir, save_student_dir
from ._hook import register_with_diffusers

# `import binarydm` makes diffusers' from_pretrained load binarized checkpoints binarized (packing/hf.py):
# at once when diffusers' quantizer table is loaded already, else the moment diffusers loads it (so that
# `import binarydm` does not import diffusers, 2 s on a small CPU).
register_with_diffusers()

__all__ = [
    "BinaryDMQuantizationConfig", "BinaryDMQuantizer", "FORMAT", "FORMAT_VERSION", "PackedFormatError", "build_model", "export_packed", "file_sizes",
    "load_checkpoint", "load_packed", "load_student_dir", "pack_bits", "packed_metadata", "read_packed",
    "save_student_dir",
    "unpack_bits",
]


def __getattr__(name: str):
    # The plug-in classes import diffusers: on first use only.
    if name in ("BinaryDMQuantizationConfig", "BinaryDMQuantizer"):
        from . import hf

        return getattr(hf, name)
    raise AttributeError(f"module 'binarydm.packing' has no attribute {name!r}")
