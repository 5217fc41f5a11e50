"""Run configuration: ``configs/base.yaml`` + ``configs/<name>.yaml`` + ``key=value`` overrides.

The base file lists every key a run understands. An experiment file holds only its differences
from the base; command-line overrides (OmegaConf dot-list syntax, values parsed as YAML) come last.
Both are checked against the base: an unknown key is an error listing the valid keys of its
section, and a value of the wrong type (a string where the base holds a number, ...) is an error
naming the key, the expected type and the value. A few keys hold free-form mappings checked by
their consumer instead (``quant_options`` by ``QuantConfig.from_dict``, ``model.config`` by
diffusers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

from omegaconf import DictConfig, ListConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

# Mappings whose keys are not listed in the base (validated where they are used).
OPEN_KEYS = frozenset({"quant_options", "model.config"})
# Keys whose value may be of more than one type.
ANY_TYPE_KEYS = frozenset({"trainer.devices", "trainer.precision", "trainer.val_check_interval",
                           "trainer.limit_val_batches"})


class ConfigError(ValueError):
    """A configuration that names an unknown key, holds a badly typed value, or cannot be found."""


def available_configs(config_dir: Union[str, Path] = CONFIG_DIR) -> list[str]:
    return sorted(p.stem for p in Path(config_dir).glob("*.yaml") if p.stem != "base")


def load_config(
    name: Optional[str] = None,
    overrides: Sequence[str] = (),
    config_dir: Union[str, Path] = CONFIG_DIR,
) -> DictConfig:
    """The resolved configuration of experiment ``name`` with ``key=value`` ``overrides`` applied."""
    config_dir = Path(config_dir)
    base = OmegaConf.load(config_dir / "base.yaml")
    layers: list[tuple[str, DictConfig]] = []
    if name is not None:
        path = config_dir / f"{name}.yaml"
        if not path.is_file():
            raise ConfigError(
                f"no experiment config {name!r} in {config_dir}; available: {available_configs(config_dir)}"
            )
        layers.append((str(path), OmegaConf.load(path)))
    if overrides:
        layers.append(("the command line", parse_overrides(overrides)))
    merged = base
    for source, layer in layers:
        check_against(base, layer, source)
        merged = OmegaConf.merge(merged, layer)
    OmegaConf.resolve(merged)
    return merged


def parse_overrides(overrides: Iterable[str]) -> DictConfig:
    items = list(overrides)
    for item in items:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. trainer.max_steps=1000)")
    return OmegaConf.from_dotlist(items)


def check_against(base: DictConfig, layer: DictConfig, source: str) -> None:
    """Raise ConfigError if ``layer`` sets a key absent from ``base`` or a value of another type."""
    _check(base, layer, "", source)


def _check(base: Any, layer: Any, prefix: str, source: str) -> None:
    for key in layer.keys():
        path = f"{prefix}{key}"
        if key not in base:
            valid = ", ".join(str(k) for k in base.keys())
            where = f"section {prefix[:-1]!r}" if prefix else "the top level"
            raise ConfigError(f"unknown config key {path!r} (from {source}); valid keys in {where}: {valid}")
        if path in OPEN_KEYS:
            value = layer._get_node(key)._value()
            if value is not None and not isinstance(value, (dict, DictConfig)):
                raise ConfigError(f"config key {path!r} (from {source}) must be a mapping, got {value!r}")
            continue
        expected = base._get_node(key)
        value = layer._get_node(key)
        if isinstance(expected, DictConfig):
            if not isinstance(value, DictConfig):
                raise ConfigError(
                    f"config key {path!r} (from {source}) is a section; set its keys instead, "
                    f"e.g. {path}.{next(iter(expected.keys()), 'key')}=..."
                )
            _check(expected, value, path + ".", source)
            continue
        _check_type(path, expected._value() if not isinstance(expected, ListConfig) else list(expected),
                    value, source)


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean (true/false)"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, ListConfig)):
        return "a list"
    return type(value).__name__


def _check_type(path: str, expected: Any, node: Any, source: str) -> None:
    if path in ANY_TYPE_KEYS or expected is None:
        return
    value = node._value() if not isinstance(node, ListConfig) else list(node)
    if value is None:
        # null means "not set" for optional strings (a hub id, a path); numbers and flags need a value.
        if isinstance(expected, str):
            return
        raise ConfigError(f"config key {path!r} (from {source}) cannot be null; expected {_type_name(expected)}")
    ok = (
        (isinstance(expected, bool) and isinstance(value, bool))
        or (isinstance(expected, int) and not isinstance(expected, bool) and isinstance(value, int)
            and not isinstance(value, bool))
        or (isinstance(expected, float) and isinstance(value, (int, float)) and not isinstance(value, bool))
        or (isinstance(expected, str) and isinstance(value, str))
        or (isinstance(expected, list) and isinstance(value, list))
    )
    if not ok:
        raise ConfigError(
            f"config key {path!r} (from {source}) expects {_type_name(expected)}, got {value!r} "
            f"({_type_name(value)})"
        )


def save_config(cfg: DictConfig, path: Union[str, Path]) -> Path:
    """Write the resolved config as YAML, atomically (a kill leaves the old file or the new one)."""
    from ..packing.format import atomic_write

    with atomic_write(path, "w") as f:
        f.write(OmegaConf.to_yaml(cfg, resolve=True))
    return Path(path)


def to_container(cfg: Any) -> Any:
    """A plain Python object (dicts, lists, scalars) from an OmegaConf node."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def split_cli(argv: Sequence[str]) -> tuple[Optional[str], list[str]]:
    """``["config=NAME", "a.b=1"]`` -> ``("NAME", ["a.b=1"])``."""
    name, rest = None, []
    for arg in argv:
        if arg.startswith("config="):
            name = arg.split("=", 1)[1]
        elif arg.startswith("--config="):
            name = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return name, rest


__all__ = ["ConfigError", "load_config", "parse_overrides", "check_against", "save_config", "split_cli",
           "available_configs", "to_container", "CONFIG_DIR"]
