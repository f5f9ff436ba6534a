"""Stage 2 of the pipeline: the hybrid representation and its posterior (concrete dropout)."""

from pgnas.posterior.concrete_dropout import ChannelConcreteDropout
from pgnas.posterior.instrument import (
    DROPOUT_NAME,
    Posterior,
    PosteriorLayer,
    candidate_seed,
    count_parameters,
    instrument,
)
from pgnas.supernets.groups import find_groups

__all__ = [
    "ChannelConcreteDropout",
    "DROPOUT_NAME",
    "Posterior",
    "PosteriorLayer",
    "candidate_seed",
    "count_parameters",
    "find_groups",
    "instrument",
]
