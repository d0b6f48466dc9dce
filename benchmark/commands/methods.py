"""``fedvid methods``: the registered methods, aggregators and backbones."""

from __future__ import annotations

from benchmark import CONF_DIR


def main(argv: list[str]) -> int:
    """List the registered methods, aggregators and backbones (built-in and entry points)."""
    from rich.console import Console
    from rich.table import Table

    from benchmark.registry import AGGREGATORS, BACKBONES, METHODS

    if argv and argv[0] in ("-h", "--help"):
        print("usage: fedvid methods\n\nList registered methods, aggregators and backbones.")
        return 0
    console = Console()
    table = Table(title="methods (client side)")
    for col in ("name", "pretext", "views", "default exchange", "config", "defined in"):
        table.add_column(col)
    for name in METHODS.names():
        cls = METHODS.get(name)
        conf = CONF_DIR / "method" / f"{name}.yaml"
        table.add_row(
            name,
            getattr(cls, "pretext", ""),
            str(getattr(cls, "num_views", "")),
            getattr(cls, "default_exchange", ""),
            f"method={name}" if conf.is_file() else "-",
            getattr(cls, "__module__", "?"),
        )
    console.print(table)
    for title, registry, group in (
        ("aggregators (server side)", AGGREGATORS, "aggregator"),
        ("backbones", BACKBONES, "backbone"),
    ):
        t = Table(title=title)
        t.add_column("name")
        t.add_column("config")
        t.add_column("defined in")
        for name in registry.names():
            obj = registry.get(name)
            conf = CONF_DIR / group / f"{name}.yaml"
            t.add_row(name, f"{group}={name}" if conf.is_file() else "-", getattr(obj, "__module__", "?"))
        console.print(t)
    return 0
