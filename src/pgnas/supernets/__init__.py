"""Stage 1 of the pipeline: super-networks, the architecture prior, by name."""

from pgnas.supernets.registry import SupernetSpec, get_supernet, list_supernets, register, register_pattern
from pgnas.supernets import shake_shake  # noqa: F401  (registers the shake-shake family)
from pgnas.supernets import enas, resnet, densenet  # noqa: F401,E402  (SupNet-E/EI, R-50, D-121)

__all__ = ["SupernetSpec", "get_supernet", "list_supernets", "register", "register_pattern"]
