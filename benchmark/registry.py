"""Registries by name for methods, aggregators, backbones, partitioners and dataset readers
(timm / lm-eval-harness style).

Built-in components register with a decorator when their module is imported; external
packages register through the entry-point groups ``fedvid.methods``,
``fedvid.aggregators``, ``fedvid.backbones``, ``fedvid.partitioners`` and
``fedvid.dataset_readers`` (the entry
point's object is imported, which runs its decorator, or is registered under the entry
point's name if it is a class). Every entry must subclass its registry's base class
(``SSLMethod``, ``Aggregator``, ``nn.Module``, ``Partitioner``, ``DatasetReader``), checked at
registration.

    @register_aggregator("fedavg")
    class FedAvg(Aggregator): ...

    agg = build_aggregator("fedavg")
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points
from typing import Any, Callable, TypeVar

T = TypeVar("T")

_BUILTIN_MODULES = (
    "benchmark.models.backbones",
    "benchmark.models.image_backbones",
    "baselines",
)


class Registry:
    """Named classes of one kind (``method``, ``aggregator``, ...), each a subclass of ``base``.

    base: ``"module:Class"``, imported on first use (the base's module may itself register).
    modules: the built-in modules imported before a lookup; entry points of ``group`` add more.
    """

    def __init__(self, kind: str, group: str, base: str, modules: tuple[str, ...] = _BUILTIN_MODULES):
        self.kind = kind
        self.group = group
        self.base = base
        self.modules = modules
        self._items: dict[str, Any] = {}
        self._loaded = False

    def _base_class(self) -> type:
        module, _, name = self.base.partition(":")
        return getattr(importlib.import_module(module), name)

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            base = self._base_class()
            if not (isinstance(obj, type) and issubclass(obj, base)):
                raise TypeError(
                    f"{self.kind} {name!r}: {obj!r} is not a subclass of {base.__module__}.{base.__qualname__}"
                )
            existing = self._items.get(name)
            if existing is not None and existing is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered by {existing!r}")
            self._items[name] = obj
            try:
                obj.registry_name = name  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass
            return obj

        return deco

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for mod in self.modules:
            importlib.import_module(mod)
        for ep in entry_points(group=self.group):
            obj = ep.load()
            if ep.name not in self._items and isinstance(obj, type):
                self.register(ep.name)(obj)

    def get(self, name: str) -> Any:
        self._load()
        if name not in self._items:
            close = difflib.get_close_matches(name, self._items, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise KeyError(
                f"unknown {self.kind} {name!r}. Registered {self.kind}s: {', '.join(sorted(self._items))}.{hint}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._items


METHODS = Registry("method", "fedvid.methods", "benchmark.methods:SSLMethod")
AGGREGATORS = Registry("aggregator", "fedvid.aggregators", "benchmark.federation.base:Aggregator")
BACKBONES = Registry("backbone", "fedvid.backbones", "torch.nn:Module")
PARTITIONERS = Registry(
    "partitioner",
    "fedvid.partitioners",
    "benchmark.splits.partition:Partitioner",
    modules=("benchmark.splits.partition",),
)
DATASET_READERS = Registry(
    "dataset reader",
    "fedvid.dataset_readers",
    "benchmark.data.annotations:DatasetReader",
    modules=("benchmark.data.annotations",),
)

register_method = METHODS.register
register_aggregator = AGGREGATORS.register
register_backbone = BACKBONES.register
register_partitioner = PARTITIONERS.register
register_dataset_reader = DATASET_READERS.register


def build_aggregator(name: str, **params: Any):
    """Instantiate a registered aggregator: ``build_aggregator("fvssl", alpha=0.9, beta=1)``."""
    return AGGREGATORS.get(name)(**params)


def build_backbone(name: str, **params: Any):
    return BACKBONES.get(name)(**params)


def build_partitioner(name: str):
    """The registered partitioner ``name`` (``conf/partition/<name>.yaml``'s ``name``)."""
    return PARTITIONERS.get(name)()


def build_dataset_reader(name: str):
    """The registered annotation reader ``name`` (a ``conf/dataset`` config's ``name``)."""
    return DATASET_READERS.get(name)()


def build_method(name: str, backbone, **params: Any):
    """Instantiate a registered SSL method around ``backbone``."""
    return METHODS.get(name)(backbone, **params)
