"""``fedvid`` command line. Each subcommand lives in its own module and is imported lazily.

Commands that take a configuration (``run``, ``evaluate``, ``splits make``,
``check-method``, ``reproduce``) compose it with Hydra from ``conf/``; overrides are
Hydra-style (``key=value``, ``group=option``, ``-m`` for multirun).
"""

from __future__ import annotations

import importlib
import os
import sys

# name -> (module, function, one-line help). Each function takes the remaining argv.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("benchmark.commands.run", "main", "federated pretraining + evaluation (Hydra overrides; -m for multirun)"),
    "evaluate": ("benchmark.commands.evaluate", "main", "evaluate a saved checkpoint: fedvid evaluate checkpoint=PATH"),
    "splits": ("benchmark.commands.splits", "main", "make | stats | verify federated split manifests"),
    "data": ("benchmark.commands.data", "main", "generate the synthetic datasets, check a dataset root"),
    "methods": ("benchmark.commands.methods", "main", "list registered methods, aggregators and backbones"),
    "check-method": ("benchmark.commands.check_method", "check_method_main", "2-round, 2-client smoke run of a method"),
    "leaderboard": ("benchmark.commands.leaderboard", "main", "validate | build | export result records"),
    "reproduce": ("benchmark.commands.reproduce", "main", "re-run a published table and compare (--list for tables)"),
    "compare": ("benchmark.commands.compare", "main", "re-print the comparison table of a multirun directory"),
    "deploy": ("benchmark.commands.deploy", "main", "certs: CA, SuperLink TLS certificate, SuperNode key pairs"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: fedvid COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "Run `fedvid COMMAND --help` for a command's options; `fedvid --debug COMMAND ...` shows tracebacks."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:  # tracebacks instead of one-line errors, here and in every process the run starts
        argv.remove("--debug")
        os.environ["FEDVID_DEBUG"] = "1"
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"fedvid: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    from benchmark.config import report_errors

    module, func, _ = COMMANDS[name]
    result = report_errors(f"fedvid {name}", lambda: getattr(importlib.import_module(module), func)(rest))
    return int(result or 0)


def entry() -> None:
    """The ``fedvid`` console script: :func:`main`, then an exit without the interpreter's
    teardown, which with torch loaded takes 1-8 s on the shared 2-core machine (destroying
    modules and objects; perf/RESULTS.md) and writes nothing: every file the command wrote is
    closed. The ``atexit`` handlers (logging, a sweep's Flower/Ray stop, temporary
    directories, multiprocessing) still run. Only for the process's own command line: an
    in-process ``main()`` (tests) returns normally."""
    code = main()
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
