import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# Keep the suite predictable on small CI machines (PGNAS_TEST_THREADS overrides, e.g. 1 beside a benchmark).
# $OMP_NUM_THREADS also tells the CLI's commands, run in this process or in subprocesses, not to choose their
# threads from the machine's load (tests compare runs bit for bit).
torch.set_num_threads(int(os.environ.get("PGNAS_TEST_THREADS", max(1, min(2, os.cpu_count() or 1)))))
os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))


@pytest.fixture
def small_config():
    """A search configuration small enough for a unit test (digits, a few seconds)."""
    import pgnas

    def make(tmp_path, **kw):
        base = dict(supernet="shake-shake-8-2x16d", epochs=2, candidates=4, top_k=2, out=str(tmp_path / "run"))
        base.update(kw)
        return pgnas.SearchConfig(**base)

    return make
