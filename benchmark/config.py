"""Hydra entry points and config helpers shared by the commands that take a configuration."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from benchmark import CONF_DIR, PROJECT_ROOT
from benchmark.io import canonical_json_bytes, sha256_bytes

# `${project_root:}` in configs points at the repository (datasets/ annotation lists live there).
if not OmegaConf.has_resolver("project_root"):
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))


#: The smallest real input (tiny synthetic sets, 8x32x32 clips, one thread per client),
#: shared by check-method, `fedvid reproduce ... scale=smoke` and the tests.
TINY_INPUT_OVERRIDES = [
    "synthetic_size=tiny",
    "client.batch_size=2",
    "client.num_workers=0",
    "client.num_threads=1",
    "clip.frames=8",
    "clip.stride=1",
    "clip.size=32",
    "clip.short_side=40",
    "engine.client_resources.num_cpus=1",
]


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
        # caught here: Hydra would print its own traceback-like report for anything raised
        result["value"] = report_errors(prog, task, cfg)
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


# ------------------------------------------------------------------ user-facing errors

DEBUG_ENV = "FEDVID_DEBUG"


def debug_enabled() -> bool:
    """``fedvid --debug ...`` (or ``HYDRA_FULL_ERROR=1``): show tracebacks instead of one-line errors."""
    return os.environ.get(DEBUG_ENV) == "1" or os.environ.get("HYDRA_FULL_ERROR") == "1"


def error_lines(prog: str, exc: BaseException) -> str:
    """One or two lines for a failure: our own errors name the key/file and the fix; anything
    else also says how to see the traceback."""
    text = str(exc).strip() or type(exc).__name__
    ours = type(exc).__module__.startswith(("benchmark", "leaderboard", "baselines"))
    if ours or isinstance(exc, (ValueError, FileNotFoundError, PermissionError, IsADirectoryError)):
        return f"{prog}: error: {text}"
    return f"{prog}: error: {type(exc).__name__}: {text}\n(an unexpected error; rerun with `fedvid --debug ...` for the traceback)"


def report_errors(prog: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``func(*args)``; a failure is printed as :func:`error_lines` (exit code 1) unless debugging."""
    try:
        return func(*args, **kwargs)
    except Exception as exc:  # the user sees the message; --debug shows the traceback
        if debug_enabled():
            raise
        print(error_lines(prog, exc), file=sys.stderr)
        return 1
