"""pgnas: posterior-guided neural architecture search (Zhou et al., AAAI 2020) for PyTorch.

The pipeline, one sub-package per stage:
``data`` -> ``supernets`` -> ``posterior`` -> ``slim`` -> ``search`` (train, sample, select) -> ``export``
-> ``retrain`` -> ``report``; ``workflow`` chains them (the CLI and ``pgnas.search()``).
"""

from pgnas.config import SearchConfig
from pgnas.errors import PgnasError
from pgnas.posterior import Posterior, instrument
from pgnas import search  # the search stage; pgnas.workflow makes it callable: pgnas.search(config)
from pgnas.search import SearchResult, resume_config
from pgnas.workflow import resume, sample
from pgnas.supernets import get_supernet, list_supernets, register
from pgnas.export.formats import load_model
from pgnas.retrain import train

__version__ = "0.1.0"


__all__ = [
    "PgnasError",
    "Posterior",
    "SearchConfig",
    "SearchResult",
    "get_supernet",
    "instrument",
    "load_model",
    "list_supernets",
    "register",
    "resume",
    "sample",
    "search",
    "train",
]
