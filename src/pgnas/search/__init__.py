"""Stage 3 of the pipeline: train the posterior, sample candidates, select the best."""

from pgnas.search.pipeline import SearchResult, resume_config, search

__all__ = ["SearchResult", "resume_config", "search"]
