"""The ``fedvid`` subcommands, one module each (``benchmark.cli`` dispatches to them).

Only this layer composes Hydra configs and reads the command line; the modules below it
take the values they need.
"""
