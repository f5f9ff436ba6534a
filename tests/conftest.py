import os
from pathlib import Path

import pytest
import torch

from pgnas.data.imagefolder import usable_cpus

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# Keep the suite predictable on small CI machines: torch's threads are the cores this process may use
# (its affinity) shared out among the pytest-xdist workers (`make test` runs one per core, at most 8:
# one thread each), at most 2; PGNAS_TEST_THREADS overrides (e.g. 1 beside a benchmark). $OMP_NUM_THREADS,
# assigned the same number, also tells the CLI's commands, run in this process or in subprocesses, not to
# choose their threads from the machine's load (tests compare runs bit for bit), and keeps them from
# oversubscribing the cores the other workers use.
CORES = usable_cpus()
MAX_WORKERS = 8  # each worker holds torch and, at times, a 1-2 GB network or a torchrun of 2 processes
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = int(os.environ.get("PGNAS_TEST_THREADS", max(1, min(2, CORES // WORKERS))))
torch.set_num_threads(THREADS)
os.environ["OMP_NUM_THREADS"] = str(THREADS)


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per usable core, at most MAX_WORKERS."""
    return max(1, min(CORES, MAX_WORKERS))


# The longest tests start first, handed out one at a time (`--dist load --maxschedchunk 1`), so that the
# workers finish together (durations on the 2-core VM); the README's two chains go to different workers.
LONG_FIRST = (
    "test_readme.py::test_readme_chain[first]",
    "test_gpu_readiness.py::test_gpu_all",
    "test_readme.py::test_readme_chain[rest]",
    "test_pruning_regime.py::",
    "test_distributed.py::",
    "test_gpu_readiness.py::",
    "test_data_imagenet.py::",
    "test_retrain.py::",
    "test_racing.py::",
    "test_reliability.py::",
    "test_tempering.py::",
    "test_export_slim.py::",
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
