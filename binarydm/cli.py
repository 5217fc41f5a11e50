"""The one ``key=value`` grammar of every entry point and tool: OmegaConf structured configs.

An entry point declares its arguments as a dataclass (types and defaults in one place) and calls
``parse(Args, argv)``. Values are read as YAML by OmegaConf (``num=64``, ``label=[0,1]``,
``quant_options={omega: 10}``); OmegaConf itself refuses an unknown key or a value of the wrong
type, and this module turns its multi-line exceptions into one ``UsageError`` line that names the
key and, for an unknown key, the valid ones::

    unknown key 'optim.learning_rate' (from the command line); valid keys in section 'optim': lr, ...
    trainer.max_steps (from the command line): Value 'many' of type 'str' could not be converted to Integer
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, FrozenSet, Iterable, Mapping, Optional, Sequence, Union

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from .errors import UsageError


def string_keys(schema: Any, prefix: str = "") -> FrozenSet[str]:
    """The dotted keys of the dataclass ``schema`` declared ``str`` or ``Optional[str]``."""
    keys: set[str] = set()
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if hint is str or (typing.get_origin(hint) is Union and args == [str]):
            keys.add(prefix + f.name)
        elif dataclasses.is_dataclass(hint):
            keys |= string_keys(hint, f"{prefix}{f.name}.")
    return frozenset(keys)


def dotlist(items: Union[Iterable[str], Mapping[str, Any]], source: str = "the command line",
            strings: FrozenSet[str] = frozenset()) -> DictConfig:
    """``["a.b=1", "c=x"]`` (values read as YAML), or a mapping of dotted keys to values
    (``{"a.b": 1, "c": [1, 2]}``, values kept as they are), as a DictConfig; an item that is not
    ``key=value`` is a UsageError. Keys in ``strings`` (see :func:`string_keys`) keep their text as
    typed (``out=0755`` stays ``"0755"``, ``ckpt=yes`` stays ``"yes"``; YAML would make them 493 and
    True); ``null`` still means None there."""
    if isinstance(items, Mapping):
        out = OmegaConf.create()
        try:
            for key, value in items.items():
                OmegaConf.update(out, str(key), value, merge=True, force_add=True)
        except OmegaConfBaseException as err:
            raise UsageError(f"cannot read {source}: {first_line(err)}") from None
        return out
    items = list(items)
    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            raise UsageError(f"argument {item!r} (from {source}) is not of the form key=value (e.g. num=64)")
    raw = {}
    for item in [i for i in items if i.partition("=")[0] in strings]:
        key, _, value = item.partition("=")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        raw[key] = None if value in ("null", "~") else value
    try:
        out = OmegaConf.from_dotlist([i for i in items if i.partition("=")[0] not in strings])
        for key, value in raw.items():
            OmegaConf.update(out, key, value, merge=True, force_add=True)
        return out
    except OmegaConfBaseException as err:
        raise UsageError(f"cannot read {source}: {first_line(err)}") from None


def merge(base: DictConfig, *layers: Any, source: str = "the command line") -> DictConfig:
    """``base`` (a structured config) with ``layers`` (DictConfigs or dicts) merged in, checked by
    OmegaConf against ``base``'s schema; errors become one UsageError line naming ``source``."""
    merged = base
    for layer in layers:
        try:
            merged = OmegaConf.merge(merged, layer)
        except (ConfigKeyError, ConfigAttributeError) as err:
            raise UsageError(_unknown_key(merged, getattr(err, "full_key", None) or "", source)) from None
        except OmegaConfBaseException as err:
            raise UsageError(_bad_value(merged, layer, err, source)) from None
    return merged


def parse(schema: Any, argv: Sequence[str], usage: Optional[str] = None) -> Any:
    """``argv`` (``key=value`` strings) over the dataclass ``schema``; returns the dataclass instance.
    ``-h``/``--help`` prints ``usage`` and exits 0."""
    if any(a in ("-h", "--help") for a in argv):
        print(usage or schema.__doc__ or "")
        raise SystemExit(0)
    cfg = merge(OmegaConf.structured(schema), dotlist(argv, strings=string_keys(schema)))
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:  # a missing mandatory value (???), the dataclass's own check
        key = getattr(err, "full_key", None)
        raise UsageError(f"{key + ': ' if key else ''}{first_line(err)}") from None


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (OmegaConf appends full_key/object_type lines)."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0].strip()


def _section(base: DictConfig, dotted: str) -> Any:
    node: Any = base
    for part in dotted.split(".") if dotted else []:
        node = node[part] if isinstance(node, DictConfig) and part in node else None
    return node


def _unknown_key(base: DictConfig, full: str, source: str) -> str:
    parent = full.rsplit(".", 1)[0] if "." in full else ""
    node = _section(base, parent)
    valid = ", ".join(str(k) for k in node.keys()) if isinstance(node, DictConfig) else ""
    where = f"section {parent!r}" if parent else "the top level"
    return f"unknown key {full!r} (from {source}); valid keys in {where}: {valid}"


def _bad_value(base: DictConfig, layer: Any, err: OmegaConfBaseException, source: str) -> str:
    key = getattr(err, "full_key", None) or _culprit(base, _plain(layer))
    if not key:
        return f"{source}: {first_line(err)}"
    node = _section(base, key)
    if isinstance(node, DictConfig) and OmegaConf.get_type(node) not in (dict, None):
        first = next(iter(node.keys()), "key")
        return f"{key} (from {source}) is a section, not a value; set its keys instead, e.g. {key}.{first}=..."
    return f"{key} (from {source}): {first_line(err)}"


def _plain(layer: Any) -> Any:
    return OmegaConf.to_container(layer) if isinstance(layer, DictConfig) else layer


def _culprit(base: Any, layer: Any, prefix: str = "") -> Optional[str]:
    """The dotted key of ``layer`` whose merge into ``base`` fails (OmegaConf does not name it for every
    error, e.g. a list of the wrong length for a tuple)."""
    if not isinstance(layer, Mapping) or not isinstance(base, DictConfig):
        return None
    for key, value in layer.items():
        path = f"{prefix}{key}"
        child = base[key] if key in base else None
        if isinstance(value, Mapping) and isinstance(child, DictConfig):
            found = _culprit(child, value, path + ".")
            if found:
                return found
        try:
            OmegaConf.merge(base, {key: value})
        except OmegaConfBaseException:
            return path
    return None


__all__ = ["dotlist", "first_line", "merge", "parse", "string_keys"]
