"""Stage 5 of the pipeline: train the posterior (``run``, ``train``, ``epochs``), draw, score and
rank candidates (``scoring``, ``scorer``, ``racing``, ``ranking``, ``tempering``, ``select``),
report them on the test split (``evaluation``, ``calibration``) and write the results
(``results``). ``checkpoint``, ``distributed``, ``signals`` and ``console`` serve them all.

The stages are chained by :mod:`pgnas.workflow`, which also makes this package callable:
``pgnas.search(config)`` runs a search (the Python twin of ``pgnas search``).
"""

from pgnas.search.results import SearchResult
from pgnas.search.run import resume_config

__all__ = ["SearchResult", "resume_config"]
