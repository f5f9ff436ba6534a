"""Run a script in a fresh Python process where pgnas's super-network, posterior and search code
cannot be imported (a helper of the export tests): what a user's serving code without the
super-network classes sees. ``formats`` (pgnas/export/formats.py, loaded on its own) and ``torch``
are there."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

PREAMBLE = f"""
import importlib.abc, importlib.util, sys, types
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.startswith(("pgnas.supernets", "pgnas.posterior", "pgnas.search")):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
pkg = types.ModuleType("pgnas"); pkg.__path__ = [{str(SRC / 'pgnas')!r}]; sys.modules["pgnas"] = pkg
spec = importlib.util.spec_from_file_location("formats", {str(SRC / 'pgnas' / 'export' / 'formats.py')!r})
formats = importlib.util.module_from_spec(spec); spec.loader.exec_module(formats)
import torch
"""


def run_without_supernet_code(body: str) -> subprocess.CompletedProcess:
    """Run ``body`` after the preamble; fails the calling test with the process's stderr."""
    res = subprocess.run([sys.executable, "-c", PREAMBLE + body], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res
