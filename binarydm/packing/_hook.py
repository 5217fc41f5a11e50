"""Register binarydm's diffusers quantizer (``packing/hf.py``) without importing diffusers first.

diffusers looks a checkpoint's ``quantization_config.quant_method`` up in
``diffusers.quantizers.auto``'s tables, a module every ``from_pretrained`` imports. If it is loaded
already, :func:`register_with_diffusers` registers at once; otherwise a finder on ``sys.meta_path``
waits for that module and registers right after it has run. Either way, once ``import binarydm`` has
run, no diffusers load can miss the "binarydm" entry.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

TARGET = "diffusers.quantizers.auto"


def _register() -> None:
    from .hf import register

    register()


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the real loader of ``TARGET`` so that registration follows its execution."""

    def find_spec(self, name, path=None, target=None):
        if name != TARGET:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)  # once: the real finders resolve the module
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        run = loader.exec_module

        def exec_module(module):
            run(module)
            _register()

        loader.exec_module = exec_module
        return spec


def register_with_diffusers() -> None:
    if TARGET in sys.modules:
        _register()
    elif not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())


__all__ = ["register_with_diffusers"]
