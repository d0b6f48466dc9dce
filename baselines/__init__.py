"""Baseline methods and aggregators, one module per method. Importing this package registers them."""

import importlib
import pkgutil

for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")
