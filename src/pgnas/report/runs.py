"""Reading finished runs: the files a search writes, as plain Python data (no torch needed)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgnas.errors import PgnasError


@dataclass
class RunRecord:
    path: Path
    summary: dict[str, Any]
    candidates: list[dict]
    metrics: list[dict]
    config: dict[str, Any]
    model_info: dict[str, Any] | None = None  # model.json of the exported selected network, if any
    label: str = ""

    @property
    def trained_plainly(self) -> bool:
        """A ``pgnas train`` folder: a network trained plainly, no posterior and no candidates."""
        return self.summary.get("command") == "train"

    @property
    def mode(self) -> str:
        """"learned", "fixed:P", "tempered" (a learned posterior sampled with a logit shift) or "plain"."""
        if self.trained_plainly:
            return "plain"
        mode = self.summary["posterior"]["mode"]
        return "tempered" if mode == "learned" and self.summary.get("scoring", {}).get("logit_shift") else mode

    @property
    def fully_scored(self) -> list[dict]:
        """The candidates scored on the whole validation split (raced-out partial scores are not comparable)."""
        n = max((c.get("val_seen", 0) for c in self.candidates), default=0)
        return [c for c in self.candidates if c.get("val_seen", n) == n]


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def load_run(path: str | Path) -> RunRecord:
    import tomllib

    path = Path(path)
    if not path.is_dir():
        raise PgnasError(f"{path} is not a folder")
    summary_path = path / "summary.json"
    if not summary_path.is_file():
        raise PgnasError(f"{path} has no summary.json: not a finished pgnas search, sample or train run")
    try:
        summary = json.loads(summary_path.read_text())
    except ValueError:
        raise PgnasError(f"{summary_path} is not valid JSON") from None
    config = tomllib.loads((path / "config.toml").read_text()) if (path / "config.toml").is_file() else {}
    info = None
    if (path / "model.json").is_file():
        try:
            info = json.loads((path / "model.json").read_text())
        except ValueError:
            info = None
    run = RunRecord(path, summary, _jsonl(path / "candidates.jsonl"), _jsonl(path / "metrics.jsonl"), config, info)
    run.label = f"{path.name} ({'trained plainly' if run.trained_plainly else run.mode + ' posterior'})"
    return run
