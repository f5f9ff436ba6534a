"""Stage 3 of the pipeline: train the posterior, sample candidates, select the best.

This package is itself callable: ``pgnas.search(config)`` runs a search (the Python twin of
``pgnas search``), while ``pgnas.search.pipeline``, ``.train``, ``.select`` remain importable.
"""

import sys
import types

from pgnas.search.pipeline import SearchResult, resume_config, search


class _CallableModule(types.ModuleType):
    def __call__(self, config=None, **kwargs) -> SearchResult:
        return search(config, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["SearchResult", "resume_config", "search"]
