"""Reading finished runs: the files a search writes, as plain Python data (no torch needed)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
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
    def mode(self) -> str:
        return self.summary["posterior"]["mode"]


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
        raise PgnasError(f"{path} has no summary.json: not a finished pgnas search")
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
    label = f"{path.name} ({summary['posterior']['mode']})"
    return RunRecord(path, summary, _jsonl(path / "candidates.jsonl"), _jsonl(path / "metrics.jsonl"), config, info, label)
