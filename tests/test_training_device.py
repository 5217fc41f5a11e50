"""Every tensor a training step uses follows the module to its device (issue 28), checked on the meta device:
parameters and buffers, and tensors held as plain attributes (LRM bases, EMA shadows, quantizer and
connection state), which ``Module.to`` would leave behind and a GPU step would then read across devices."""

import pytest
import torch

from binarydm.training import load_config
from binarydm.training.runner import build


def tensors_off(obj, device: str, path: str = "module", seen=None, depth: int = 0) -> list[str]:
    """Paths of the tensors reachable from ``obj`` (module trees, attributes, dicts, lists) not on ``device``."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 4:
        return []
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return [f"{path} on {obj.device}"] if obj.device.type != device else []
    found = []
    if isinstance(obj, torch.nn.Module):
        for key, value in vars(obj).items():
            if key in ("_parameters", "_buffers", "_modules"):
                for name, item in value.items():
                    found += tensors_off(item, device, f"{path}.{name}", seen, depth)
            else:
                found += tensors_off(value, device, f"{path}.{key}", seen, depth + 1)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            found += tensors_off(value, device, f"{path}[{key!r}]", seen, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            found += tensors_off(value, device, f"{path}[{i}]", seen, depth + 1)
    return found


@pytest.mark.parametrize("quant, extra", [("w1a4", ["ema.enabled=true"]),
                                          ("bidm", ["loss.spd_weight=0.01", "ema.enabled=true"])])
def test_every_tensor_of_the_module_follows_it_to_the_device(tmp_path, quant, extra):
    module = build(load_config("tiny", [f"out_dir={tmp_path}", f"quant={quant}", *extra])).module
    module.to("meta")
    module.on_fit_start()  # the teacher, kept out of the module tree, moves here
    assert module.device.type == "meta"
    assert tensors_off(module, "meta") == []


def test_the_walker_finds_a_tensor_left_behind():
    layer = torch.nn.Linear(2, 2)
    layer.cache = {"x": [torch.zeros(1)]}  # a plain attribute: Module.to does not move it
    layer.to("meta")
    assert tensors_off(layer, "meta") == ["module.cache['x'][0] on cpu"]
