"""A registry of super-networks by name (in the manner of timm's model registry).

A super-network is an ordinary ``nn.Module`` built by a factory
``factory(num_classes: int, in_channels: int) -> nn.Module``. Its spec records the defaults the
search takes from it (the weight prior lambda_w of the paper's section 3) and how to instrument it
(input-channel groups of layers that read concatenations).

Contract with the trainer: in training mode ``forward`` returns logits, or ``(logits, aux_logits)``
for networks with an auxiliary head (weighted by ``aux_weight``); a network with a schedule over
training (drop-path) may define ``set_progress(fraction: float)``, called at each epoch start.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from torch import nn

from pgnas.errors import PgnasError
from pgnas.supernets.groups import auto_groups

Factory = Callable[..., nn.Module]


@dataclass(frozen=True)
class SupernetSpec:
    name: str
    factory: Factory
    description: str
    lambda_w: float = 50.0
    aux_weight: float = 0.0
    input_size: int = 32  # native input resolution (for MACs)
    paper_params: float | None = None  # the paper's parameter count, for reference
    groups: Callable[[nn.Module], Mapping[str, Sequence[int]]] | None = None
    exclude: Callable[[nn.Module], Sequence[str]] | None = None
    listed: bool = True

    def build(self, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        """The network; a factory that fails (a user's, or a pattern's invalid depth) is a
        one-line PgnasError naming the super-network."""
        try:
            return self.factory(num_classes=num_classes, in_channels=in_channels)
        except PgnasError:
            raise
        except Exception as exc:  # noqa: BLE001 - a user's factory may raise anything
            text = str(exc).strip()
            first = text.splitlines()[0] if text else type(exc).__name__
            raise PgnasError(f"super-network {self.name!r} cannot be built ({type(exc).__name__}: {first})") from None


_REGISTRY: dict[str, SupernetSpec] = {}
_PATTERNS: list[tuple[re.Pattern, Callable[[re.Match], SupernetSpec]]] = []


def register(spec: SupernetSpec) -> SupernetSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"super-network {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def register_pattern(pattern: str, make: Callable[[re.Match], SupernetSpec]) -> None:
    """A family of names (e.g. ``shake-shake-<depth>-2x<width>d``) built on demand."""
    _PATTERNS.append((re.compile(pattern), make))


def list_supernets() -> list[SupernetSpec]:
    return [s for s in _REGISTRY.values() if s.listed]


def get_supernet(name: str) -> SupernetSpec:
    """Look a super-network up by name, by family pattern, or as ``module:function``."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    for pattern, make in _PATTERNS:
        m = pattern.fullmatch(name)
        if m:
            return make(m)
    if ":" in name:
        return _from_import_path(name)
    from pgnas.errors import did_you_mean

    names = [s.name for s in list_supernets()]
    raise PgnasError(f"unknown super-network {name!r}{did_you_mean(name, names)}; known: {', '.join(names)}, shake-shake-<6n+2>-2x<w>d, or a module:function factory")


def _import(module_name: str):
    """Import ``pkg.module`` (trying the working directory too) or a file ``path/to/file.py``."""
    import os
    import sys
    from pathlib import Path

    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise ImportError(f"no file {module_name}")
        spec = importlib.util.spec_from_file_location(f"pgnas_user_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError:
        cwd = os.getcwd()
        if cwd in sys.path or "" in sys.path:
            raise
        sys.path.insert(0, cwd)  # `pgnas` run as a console script does not see the working directory
        return importlib.import_module(module_name)


def _from_import_path(name: str) -> SupernetSpec:
    module_name, _, attr = name.rpartition(":")
    try:
        module = _import(module_name)
    except ImportError as exc:
        raise PgnasError(f"super-network {name!r}: cannot import module {module_name!r} ({exc})") from None
    obj = getattr(module, attr, None)
    if obj is None:
        raise PgnasError(f"super-network {name!r}: module {module_name!r} has no attribute {attr!r}")
    if isinstance(obj, SupernetSpec):
        return obj
    if not callable(obj):
        raise PgnasError(f"super-network {name!r}: {attr!r} is not a factory function")
    return SupernetSpec(name=name, factory=obj, description=f"user factory {name}", groups=auto_groups, listed=False)
