"""Which protocol a run may claim: its named protocol, unless it changed a setting the protocol owns.

A protocol (``conf/protocol/<name>.yaml``, card ``docs/protocols/<name>.md``) owns every key its
config file sets (with the files it includes through ``defaults``). A run that composes the
protocol and then overrides one of those keys (``protocol=fedvssl eval.pooling=avg``) did not run
that protocol: unless the config names its own ``protocol.variant`` (``smoke``, ``compare``: a
deliberate, documented other scale), its record says ``variant: "modified"`` with the changed
keys and their values (``overridden``), and the leaderboard puts it in a track of its own.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from benchmark import CONF_DIR

PROTOCOL_DIR = CONF_DIR / "protocol"
#: ``protocol.variant`` of a run that overrides protocol-owned keys without naming a variant.
MODIFIED_VARIANT = "modified"
_MISSING = object()


def _load_chain(path: Path) -> dict[str, Any]:
    """The file's content merged as Hydra does with its ``defaults`` (other files of the same
    group, ``_self_`` where listed, else last)."""
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    assert isinstance(raw, dict)
    defaults = raw.pop("defaults", []) or []
    if "_self_" not in defaults:
        defaults = [*defaults, "_self_"]
    merged = OmegaConf.create({})
    for entry in defaults:
        part = raw if entry == "_self_" else _load_chain(path.parent / f"{entry}.yaml")
        merged = OmegaConf.merge(merged, part)
    out = OmegaConf.to_container(merged, resolve=True)
    assert isinstance(out, dict)
    return out


def _leaves(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value; lists, scalars and empty mappings (``clip: {}``) are leaves."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_leaves(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def protocol_settings(name: str) -> dict[str, Any]:
    """The settings protocol ``name`` owns: dotted key -> value, ``protocol.*`` excluded."""
    path = PROTOCOL_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"protocol={name!r}: no {path}")
    return {k: v for k, v in _leaves(_load_chain(path)).items() if not k.startswith("protocol.")}


def same_value(ours: Any, actual: Any) -> bool:
    """Config values equal as settings: numbers within 1e-9 relative, containers element-wise."""
    if isinstance(ours, (list, tuple)) and isinstance(actual, (list, tuple)):
        return len(ours) == len(actual) and all(same_value(a, b) for a, b in zip(ours, actual))
    if isinstance(ours, dict) and isinstance(actual, dict):
        return ours.keys() == actual.keys() and all(same_value(ours[k], actual[k]) for k in ours)
    if (
        isinstance(ours, (int, float))
        and isinstance(actual, (int, float))
        and not isinstance(ours, bool)
        and not isinstance(actual, bool)
    ):
        return math.isclose(float(ours), float(actual), rel_tol=1e-9, abs_tol=1e-12)
    return ours == actual


def _select(cfg: DictConfig | dict[str, Any], dotted: str) -> Any:
    """The value at a dotted key (resolved, plain containers), or ``_MISSING``."""
    if isinstance(cfg, DictConfig):
        value = OmegaConf.select(cfg, dotted, default=_MISSING)
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    from benchmark.config_check import ABSENT, select

    value = select(cfg, dotted)
    return _MISSING if value is ABSENT else value


def protocol_overrides(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """Protocol-owned keys whose value in ``cfg`` differs from the protocol's: key -> the run's
    value (``None`` for a key the run dropped). Empty for a config without a protocol."""
    proto = _select(cfg, "protocol")
    if proto is _MISSING or not proto:
        return {}
    out = {}
    for key, value in protocol_settings(str(proto["name"])).items():
        actual = _select(cfg, key)
        if actual is _MISSING or not same_value(value, actual):
            out[key] = None if actual is _MISSING else actual
    return dict(sorted(out.items()))


def protocol_id(cfg: DictConfig | dict[str, Any]) -> dict[str, Any] | None:
    """``{"name", "version", "variant"}`` a record may claim for ``cfg`` (None without a protocol).

    The config's own ``protocol.variant`` is kept; without one, overridden protocol-owned keys
    make it ``"modified"`` and add ``overridden`` (key -> the run's value).
    """
    proto = _select(cfg, "protocol")
    if proto is _MISSING or not proto:
        return None
    out: dict[str, Any] = {
        "name": str(proto["name"]),
        "version": int(proto["version"]),
        "variant": proto.get("variant"),
    }
    if out["variant"] is None:
        overridden = protocol_overrides(cfg)
        if overridden:
            out["variant"] = MODIFIED_VARIANT
            out["overridden"] = overridden
    return out


def override_warning(cfg: DictConfig | dict[str, Any]) -> str | None:
    """One line for the start of a run that will not be recorded under its plain protocol."""
    pid = protocol_id(cfg)
    if not pid or "overridden" not in pid:
        return None
    keys = ", ".join(f"{k}={v}" for k, v in pid["overridden"].items())
    return (
        f"note: this run overrides settings of protocol {pid['name']} v{pid['version']} ({keys}); it is "
        f"recorded as variant {MODIFIED_VARIANT!r} and ranked in a track of its own "
        f"(docs/protocols/{pid['name']}.md)"
    )
