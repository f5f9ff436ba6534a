import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# Keep the suite predictable on small CI machines: torch's threads are the cores shared out among the
# pytest-xdist workers (`make test` runs one per core: one thread each), at most 2; PGNAS_TEST_THREADS
# overrides (e.g. 1 beside a benchmark). $OMP_NUM_THREADS, assigned the same number, also tells the CLI's
# commands, run in this process or in subprocesses, not to choose their threads from the machine's load
# (tests compare runs bit for bit), and keeps them from oversubscribing the cores the other workers use.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = int(os.environ.get("PGNAS_TEST_THREADS", max(1, min(2, (os.cpu_count() or 1) // WORKERS))))
torch.set_num_threads(THREADS)
os.environ["OMP_NUM_THREADS"] = str(THREADS)

# The longest test files start first, so that the workers finish together (durations on the 2-core VM);
# whole files, so that a module-scoped fixture is not built twice in one worker
LONG_FIRST = (
    "test_readme.py::",
    "test_pruning_regime.py::",
    "test_distributed.py::",
    "test_gpu_readiness.py::",
    "test_export_slim.py::",
    "test_reliability.py::",
    "test_tempering.py::",
    "test_racing.py::",
    "test_retrain.py::",
    "test_data_imagenet.py::",
)

def pytest_collection_modifyitems(items):
    """Long tests first, in a fixed order (every xdist worker must collect the same order)."""
    items.sort(key=lambda item: next((i for i, key in enumerate(LONG_FIRST) if key in item.nodeid), len(LONG_FIRST)))


@pytest.fixture
def small_config():
    """A search configuration small enough for a unit test (digits, a few seconds)."""
    import pgnas

    def make(tmp_path, **kw):
        base = dict(supernet="shake-shake-8-2x16d", epochs=2, candidates=4, top_k=2, out=str(tmp_path / "run"))
        base.update(kw)
        return pgnas.SearchConfig(**base)

    return make
