"""FedVid-Bench: federated self-supervised learning on video, benchmarked one way for every method."""

from pathlib import Path

__version__ = "0.1.0"

#: Repository root (the package is installed editable; conf/ and datasets/ live beside it).
PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"
DATASETS_DIR = PROJECT_ROOT / "datasets"
