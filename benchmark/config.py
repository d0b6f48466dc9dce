"""Hydra entry points and config helpers shared by the commands that take a configuration."""

from __future__ import annotations

import sys
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from benchmark import CONF_DIR, PROJECT_ROOT
from benchmark.io import canonical_json_bytes, sha256_bytes

# `${project_root:}` in configs points at the repository (datasets/ annotation lists live there).
if not OmegaConf.has_resolver("project_root"):
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))


def hydra_entry(prog: str, config_name: str, task: Callable[[DictConfig], Any], argv: list[str]) -> int:
    """Run ``task`` under ``@hydra.main`` with ``argv`` as its command line.

    Using the real ``hydra.main`` (not the compose API) gives users Hydra's behaviour
    exactly: run directories (``outputs/<date>/<time>``, ``hydra.run.dir=...``),
    multirun with ``-m``, ``--cfg job``, and Hydra's own error for unknown groups/options.
    """
    import hydra

    result: dict[str, Any] = {}

    @hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base="1.3")
    def _main(cfg: DictConfig) -> Any:
        result["value"] = task(cfg)
        return result["value"]

    saved = sys.argv
    sys.argv = [prog, *argv]
    try:
        _main()
    finally:
        sys.argv = saved
    value = result.get("value")
    return value if isinstance(value, int) else 0


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]


def config_sha256(cfg: DictConfig | dict) -> str:
    """sha256 of the canonical JSON of the resolved config (recorded in every result)."""
    data = cfg if isinstance(cfg, dict) else to_container(cfg)
    return sha256_bytes(canonical_json_bytes(data))
