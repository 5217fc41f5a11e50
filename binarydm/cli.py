"""The one ``key=value`` grammar of every entry point and tool: OmegaConf structured configs.

An entry point declares its arguments as a dataclass (types and defaults in one place) and calls
``parse(Args, argv)``. Values are read as YAML by OmegaConf (``num=64``, ``label=[0,1]``,
``quant_options={omega: 10}``); OmegaConf itself refuses an unknown key or a value of the wrong
type, and this module turns its multi-line exceptions into one ``UsageError`` line that names the
argument and, for an unknown key, the valid ones.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from .errors import UsageError


def dotlist(items: Iterable[str], source: str = "the command line") -> DictConfig:
    """``["a.b=1", "c=x"]`` as a DictConfig; an item that is not ``key=value`` is a UsageError."""
    items = list(items)
    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            raise UsageError(f"argument {item!r} (from {source}) is not of the form key=value (e.g. num=64)")
    try:
        return OmegaConf.from_dotlist(items)
    except OmegaConfBaseException as err:
        raise UsageError(f"cannot read {source}: {_first_line(err)}") from None


def merge(base: DictConfig, *layers: Any, source: str = "the command line") -> DictConfig:
    """``base`` (a structured config) with ``layers`` (DictConfigs or dicts) merged in, checked by
    OmegaConf against ``base``'s schema; errors become one UsageError line naming ``source``."""
    try:
        return OmegaConf.merge(base, *layers)
    except (ConfigKeyError, ConfigAttributeError) as err:
        raise UsageError(_unknown_key(base, err, source)) from None
    except ValidationError as err:
        key = getattr(err, "full_key", None)
        where = f"argument {key} (from {source})" if key else source
        raise UsageError(f"{where}: {_first_line(err)}") from None
    except OmegaConfBaseException as err:
        raise UsageError(f"{source}: {_first_line(err)}") from None


def parse(schema: Any, argv: Sequence[str], usage: Optional[str] = None) -> Any:
    """``argv`` (``key=value`` strings) over the dataclass ``schema``; returns the dataclass instance.
    ``-h``/``--help`` prints ``usage`` and exits 0."""
    if any(a in ("-h", "--help") for a in argv):
        print(usage or schema.__doc__ or "")
        raise SystemExit(0)
    cfg = merge(OmegaConf.structured(schema), dotlist(argv))
    return OmegaConf.to_object(cfg)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0].strip()


def _unknown_key(base: DictConfig, err: OmegaConfBaseException, source: str) -> str:
    full = getattr(err, "full_key", None) or ""
    node: Any = base
    parent = full.rsplit(".", 1)[0] if "." in full else ""
    for part in parent.split(".") if parent else []:
        if isinstance(node, DictConfig) and part in node:
            node = node[part]
    valid = ", ".join(str(k) for k in node.keys()) if isinstance(node, DictConfig) else ""
    where = f"section {parent!r}" if parent else "the top level"
    return f"unknown key {full!r} (from {source}); valid keys in {where}: {valid}"


__all__ = ["dotlist", "merge", "parse"]
