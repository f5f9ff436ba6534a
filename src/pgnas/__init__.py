"""pgnas: posterior-guided neural architecture search (Zhou et al., AAAI 2020) for PyTorch.

The pipeline, one sub-package per stage:
``data`` -> ``supernets`` -> ``posterior`` -> ``search`` (train, sample, select) -> ``export`` -> ``report``.
"""

from pgnas.config import SearchConfig
from pgnas.errors import PgnasError
from pgnas.posterior import Posterior, instrument
from pgnas import search  # a callable package: pgnas.search(config) runs a search
from pgnas.search import SearchResult, resume_config
from pgnas.supernets import get_supernet, list_supernets, register
from pgnas.export.formats import load_model
from pgnas.retrain import train

__version__ = "0.1.0"


def resume(run_dir, **overrides) -> SearchResult:
    """Continue the search in ``run_dir`` from its last checkpoint (``pgnas search --resume``)."""
    progress = overrides.pop("progress", True)
    return search(resume_config(run_dir, overrides), resume=True, progress=progress)


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
    "search",
    "train",
]
