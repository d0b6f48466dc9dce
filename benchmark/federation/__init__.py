"""Federation: the aggregator contract (usable without Flower) and the Flower apps.

from benchmark.federation import ClientUpdate
from benchmark.registry import build_aggregator

agg = build_aggregator("fedavg")
new_global = agg.aggregate(updates, previous=None, server_round=1)
"""

from benchmark.federation.base import Aggregator, ClientUpdate

__all__ = ["Aggregator", "ClientUpdate"]
