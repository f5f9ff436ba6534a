"""Search configuration: one flat dataclass, read from TOML, overridden by flags, validated.

The resolved configuration is written to ``config.toml`` in every results folder, so a run can
be repeated (``pgnas search --config RUN/config.toml``) or resumed exactly.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pgnas.errors import PgnasError, did_you_mean
from pgnas.presets import preset_settings

DEFAULT_SUPERNET = "shake-shake-14-2x16d"
DEFAULT_DATASET = "digits"


@dataclass
class SearchConfig:
    """Everything a search needs. ``None`` means "the super-network's or data set's default"."""

    # what to search
    supernet: str = DEFAULT_SUPERNET
    dataset: str = DEFAULT_DATASET
    data_dir: str | None = None
    download: bool = False
    # posterior training (paper section 3; small defaults for the embedded digits run)
    epochs: int = 40
    batch_size: int = 64
    lr: float = 0.05
    lr_schedule: str = "cosine"  # "cosine", "sgdr:T0:TMUL:LR_MIN" (epochs), or "step:E1,E2,..." (lr / 10 at each)
    momentum: float = 0.9
    grad_clip: float = 5.0  # global gradient-norm clip; 0 turns clipping off
    tau: float = 0.2
    init_p: float = 0.1
    posterior: str = "learned"  # "learned", or "fixed:P" for the random baseline (Bender et al.)
    plain_layers: str = ""  # comma-separated layers left without a p (never dropped), besides the super-network's own
    lambda_w: float | None = None  # weight prior l^2; None: the super-network's default
    lambda_p: float = 1.0
    weight_decay: float = 0.0  # pgnas train only (a search has none: the KL term replaces it)
    n_data: float | None = None  # N in the KL term; None: the paper's for cifar10/100 (5e5) and imagenet (1.2e6), else 10 x training images
    # data
    val_size: float | None = None  # fraction (<1) or count (>=1) of train held out; None: data set default
    split_seed: int = 0
    train_subset: int | None = None  # train on a stratified subset of this many images (quick studies)
    crop_pad: int | None = None
    flip: bool | None = None
    cutout: int | None = None
    autoaugment: bool = False
    data_cache: str | None = None  # decoded-data cache folder; None: $PGNAS_CACHE or ~/.cache/pgnas
    skip_bad: bool = False  # skip (and count) unreadable or odd-sized images instead of stopping
    image_size: int | None = None  # resize ImageFolder images to this side (imagenet: the crop size)
    # guided sampling and selection
    candidates: int = 100
    top_k: int = 5
    eval_batch_size: int | None = None  # rows per scoring pass; None: 128 on a CPU (cache-sized), 2000 on a GPU
    eval_tile: int | None = None  # candidates per forward pass (1: one by one), exact either way; None: 1 on a CPU, 8 on a GPU
    eval_path: str = "auto"  # "auto", "masked" (tiled super-network) or "slim" (each candidate's slim network)
    race: bool = False  # paired racing over the validation split (faster, may miss the winner)
    race_delta: float = 0.05  # racing: error level of the confidence bound that drops a candidate
    bn_recalibrate: int | None = None  # training batches to re-estimate BN per candidate; 0: off (the paper); None: 0, or 8 for a tempered posterior
    max_params: float | None = None  # select the best candidate whose slim network has at most this many parameters
    max_macs: float | None = None  # ... at most this many MACs (one input)
    max_latency_ms: float | None = None  # ... a batch-1 latency at most this on the current device
    logit_shift: float = 0.0  # draw candidates from the tempered posterior sigmoid(logit p + shift) (pgnas sample sets it for budgets)
    # run
    seed: int = 0
    device: str = "auto"
    compile: bool = False  # torch.compile the training step's model (GPU runs)
    checkpoint_minutes: float = 10.0  # also checkpoint inside an epoch this often; 0: at epoch ends only
    threads: int | None = None  # CPU threads for torch; None: torch's ($OMP_NUM_THREADS), at most the cores this process may use
    out: str | None = None

    # ------------------------------------------------------------------ validation
    def validate(self) -> "SearchConfig":
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise PgnasError(msg)

        need(isinstance(self.epochs, int) and self.epochs >= 1, f"epochs must be >= 1, got {self.epochs!r}")
        need(isinstance(self.batch_size, int) and self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size!r}")
        need(isinstance(self.candidates, int) and self.candidates >= 1, f"candidates must be >= 1, got {self.candidates!r}")
        need(isinstance(self.top_k, int) and self.top_k >= 1, f"top_k must be >= 1, got {self.top_k!r}")
        need(self.eval_batch_size is None or (isinstance(self.eval_batch_size, int) and self.eval_batch_size >= 1), f"eval_batch_size must be >= 1, got {self.eval_batch_size!r}")
        need(self.eval_path in ("auto", "masked", "slim"), f"eval_path must be auto, masked or slim, got {self.eval_path!r}")
        need(self.eval_tile is None or (isinstance(self.eval_tile, int) and self.eval_tile >= 1), f"eval_tile must be >= 1, got {self.eval_tile!r}")
        need(_finite(self.race_delta) and 0 < self.race_delta < 1, f"race_delta must be in (0, 1), got {self.race_delta!r}")
        need(self.bn_recalibrate is None or (isinstance(self.bn_recalibrate, int) and self.bn_recalibrate >= 0), f"bn_recalibrate must be >= 0, got {self.bn_recalibrate!r}")
        for name in ("max_params", "max_macs", "max_latency_ms"):
            v = getattr(self, name)
            need(v is None or (_finite(v) and v > 0), f"{name} must be > 0, got {v!r}")
        need(_finite(self.logit_shift), f"logit_shift must be a number, got {self.logit_shift!r}")
        need(self.threads is None or (isinstance(self.threads, int) and self.threads >= 1), f"threads must be >= 1, got {self.threads!r}")
        need(_finite(self.checkpoint_minutes) and self.checkpoint_minutes >= 0, f"checkpoint_minutes must be >= 0, got {self.checkpoint_minutes!r}")
        need(_finite(self.lr) and self.lr > 0, f"lr must be > 0, got {self.lr!r}")
        need(_finite(self.momentum) and 0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum!r}")
        need(_finite(self.grad_clip) and self.grad_clip >= 0, f"grad_clip must be >= 0 (0: no clipping), got {self.grad_clip!r}")
        parse_lr_schedule(self.lr_schedule)
        need(_finite(self.tau) and self.tau > 0, f"tau must be > 0, got {self.tau!r}")
        need(_finite(self.init_p) and 0 < self.init_p < 1, f"init_p must be in (0, 1), got {self.init_p!r}")
        need(self.lambda_w is None or (_finite(self.lambda_w) and self.lambda_w >= 0), f"lambda_w must be >= 0, got {self.lambda_w!r}")
        need(_finite(self.lambda_p) and self.lambda_p >= 0, f"lambda_p must be >= 0, got {self.lambda_p!r}")
        need(_finite(self.weight_decay) and self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay!r}")
        need(self.n_data is None or (_finite(self.n_data) and self.n_data > 0), f"n_data must be > 0, got {self.n_data!r}")
        need(self.val_size is None or (_finite(self.val_size) and self.val_size > 0), f"val_size must be > 0, got {self.val_size!r}")
        need(self.train_subset is None or (isinstance(self.train_subset, int) and self.train_subset >= 1), f"train_subset must be >= 1, got {self.train_subset!r}")
        need(self.image_size is None or (isinstance(self.image_size, int) and self.image_size >= 1), f"image_size must be >= 1, got {self.image_size!r}")
        for name in ("crop_pad", "cutout"):
            v = getattr(self, name)
            need(v is None or (isinstance(v, int) and v >= 0), f"{name} must be >= 0, got {v!r}")
        self.fixed_p  # parses and checks `posterior`
        return self

    @property
    def fixed_p(self) -> float | None:
        """The fixed drop rate of the random baseline, or None for a learned posterior."""
        text = str(self.posterior).strip().lower()
        if text == "learned":
            return None
        if text.startswith("fixed:"):
            try:
                p = float(text.split(":", 1)[1])
            except ValueError:
                p = float("nan")
            if not (0 < p < 1):
                raise PgnasError(f"posterior 'fixed:P' needs P in (0, 1), got {self.posterior!r}")
            return p
        raise PgnasError(f"posterior must be 'learned' or 'fixed:P' (e.g. fixed:0.3), got {self.posterior!r}")

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> "SearchConfig":
        """Settings by name; a ``preset`` entry names a preset whose settings come first."""
        data = dict(data)
        if "preset" in data:
            data = {**preset_settings(str(data.pop("preset"))), **data}
        for old in RETIRED:  # settings of older pgnas versions, still in their results folders
            data.pop(old, None)
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            hints = [u + did_you_mean(u, known) for u in unknown]
            raise PgnasError(f"{source}: unknown setting(s) {', '.join(hints)}")
        kwargs = {}
        for key, value in data.items():
            kwargs[key] = _coerce(key, value, known[key], source)
        return cls(**kwargs)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "SearchConfig":
        """The configuration of preset ``name`` (``pgnas presets``) with ``overrides`` on top."""
        return cls.from_dict({**preset_settings(name), **overrides}, source=f"preset {name}")

    @classmethod
    def from_toml(cls, path: str | Path) -> "SearchConfig":
        path = Path(path)
        if not path.is_file():
            raise PgnasError(f"config file {path} does not exist")
        try:
            data = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise PgnasError(f"config file {path} is not valid TOML: {exc}") from None
        return cls.from_dict(data, source=str(path))

    def to_toml(self) -> str:
        # TOML has no null: settings left at None ("use the default") are written as comments.
        data = {k: v for k, v in self.to_dict().items() if v is not None}
        unset = [k for k, v in self.to_dict().items() if v is None]
        text = "# pgnas search configuration (resolved)\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in data.items())
        if unset:
            text += "# left at their defaults: " + ", ".join(unset) + "\n"
        return text

    def eval_batch(self, device_type: str) -> int:
        """Rows per scoring pass: ``eval_batch_size``, or the device's default (measured: on a 2-core
        CPU, 128-image passes scored 1.06 candidates/s against 0.59 at 500: candidate_eval.json)."""
        return self.eval_batch_size or (128 if device_type == "cpu" else 2000)

    def tile(self, device_type: str) -> int:
        """Candidates per forward pass: ``eval_tile``, or 1 on a CPU (tiles only add work there) and
        8 on a GPU (one candidate's pass leaves the device idle)."""
        return self.eval_tile or (1 if device_type == "cpu" else 8)

    @property
    def plain_layer_names(self) -> list[str]:
        return [n.strip() for n in self.plain_layers.split(",") if n.strip()]

    def replace(self, **changes: Any) -> "SearchConfig":
        return dataclasses.replace(self, **changes)


# Settings older versions wrote (successive-halving racing): ignored when read back.
RETIRED = ("race_eta", "race_rungs")

# What each setting means (the command line's --help shows it with the default).
FIELD_HELP = {
    "supernet": "super-network: a name from `pgnas supernets`, shake-shake-<6n+2>-2x<w>d, or module:function / file.py:function",
    "dataset": "data set: digits, cifar10, cifar100, imagefolder or imagenet",
    "data_dir": "folder (or .tar.gz for imagefolder) holding the data set's files",
    "download": "download a missing cifar10/cifar100 archive (md5-checked)",
    "epochs": "training epochs",
    "batch_size": "global batch size (divided among torchrun ranks)",
    "lr": "initial learning rate (SGD, Nesterov momentum)",
    "lr_schedule": "cosine | sgdr:T0:TMUL:LR_MIN | step:E1,E2,... (epochs)",
    "momentum": "SGD momentum (Nesterov when > 0)",
    "grad_clip": "global gradient-norm clipping; 0 turns it off",
    "tau": "temperature of the relaxed Bernoulli masks",
    "init_p": "initial drop probability of every p group",
    "posterior": "'learned' (PGNAS), or 'fixed:P' for the random baseline with drop rate P",
    "plain_layers": "comma-separated layer names left without a p, never dropped (e.g. stem,fc: the image's channels and the classifier's input)",
    "lambda_w": "weight prior l^2 of the KL term (default: the super-network's, the paper's section 3)",
    "lambda_p": "coefficient of the KL term's Bernoulli entropy part",
    "weight_decay": "weight decay (pgnas train only: a search has none, the KL term replaces it)",
    "n_data": "N of the KL term (default: 5e5 for cifar10/cifar100, 1.2e6 for imagenet, else 10 x training images)",
    "val_size": "validation split held out from training: a fraction (<1) or a count (default: the data set's)",
    "split_seed": "seed of the validation split (and of --train-subset)",
    "train_subset": "train on a stratified subset of this many training images",
    "crop_pad": "pad-and-random-crop by this many pixels (default: the data set's)",
    "flip": "random horizontal flips (default: the data set's)",
    "cutout": "side of the cutout square, 0 for none (default: the data set's)",
    "autoaugment": "AutoAugment's CIFAR-10 policy on training images",
    "data_cache": "decoded-data cache folder (default: $PGNAS_CACHE or ~/.cache/pgnas)",
    "skip_bad": "skip (and count) unreadable or odd-sized images instead of stopping",
    "image_size": "resize images to this side (cifar, imagefolder; imagenet: the crop size)",
    "candidates": "candidates to draw from the posterior and rank on the validation split",
    "top_k": "best candidates to report on the test split",
    "eval_batch_size": "rows per forward pass when scoring, all tiles together (default: 128 on a CPU, where small batches stay in cache, 2000 on a GPU)",
    "eval_tile": "candidates per forward pass of the masked super-network, exact either way (default: 1 on a CPU, where tiling is slower, 8 on a GPU)",
    "eval_path": "how candidates are scored: auto (slim networks on a CPU when they are cheaper, tiles of the masked super-network on a GPU), masked or slim",
    "race": "paired racing over the validation split: drops candidates early on growing prefixes; keeps the exhaustive winner with probability >= 1 - race_delta (not faster on posteriors whose candidates are close)",
    "race_delta": "racing: the chance of losing the exhaustive winner; a candidate is dropped when an exact one-sided sign test against another, at level delta / ((C - 1) (looks - 1)), says it is worse",
    "bn_recalibrate": "training batches to re-estimate each candidate's BN statistics; 0: off, as in the paper (default: 0, or 8 for a tempered posterior)",
    "max_params": "select the best candidate whose slim network has at most this many parameters (e.g. 2.5M)",
    "max_macs": "select the best candidate whose slim network needs at most this many MACs per input (e.g. 20M)",
    "max_latency_ms": "select the best candidate whose slim network runs one input in at most this many ms here (median)",
    "logit_shift": "draw candidates from the tempered posterior sigmoid(logit p + shift) (set by pgnas sample for budgets)",
    "seed": "seed of initialisation, data order, masks and candidates",
    "device": "auto, cpu or cuda[:N]",
    "compile": "torch.compile the network for training",
    "checkpoint_minutes": "also checkpoint inside an epoch this often; 0: at epoch ends only",
    "threads": "CPU threads for torch (default: $OMP_NUM_THREADS if set, else the cores other processes leave free now; at most the cores this process may use)",
    "out": "results folder (default: runs/<supernet>-<dataset>-<time>)",
}


def parse_lr_schedule(text: str) -> tuple[str, tuple]:
    """``"cosine"`` -> ("cosine", ()); ``"sgdr:T0:TMUL:LR_MIN"`` -> ("sgdr", (T0, TMUL, LR_MIN)), cosine
    with warm restarts (Loshchilov & Hutter), the first cycle T0 epochs, each next TMUL times longer,
    from ``lr`` down to LR_MIN; ``"step:E1,E2,..."`` -> ("step", (E1, E2, ...)), lr divided by 10 at
    each epoch Ei."""
    raw = str(text).strip().lower()
    kind, _, rest = raw.partition(":")
    try:
        if kind == "cosine" and not rest:
            return "cosine", ()
        if kind == "sgdr":
            t0, tmul, lr_min = rest.split(":")
            t0, tmul, lr_min = float(t0), float(tmul), float(lr_min)
            if t0 > 0 and tmul >= 1 and lr_min >= 0 and all(map(math.isfinite, (t0, tmul, lr_min))):
                return "sgdr", (t0, tmul, lr_min)
        if kind == "step":
            milestones = tuple(float(m) for m in rest.split(","))
            if all(m > 0 and math.isfinite(m) for m in milestones) and list(milestones) == sorted(milestones):
                return "step", milestones
    except ValueError:
        pass
    raise PgnasError(
        f"lr_schedule must be 'cosine', 'sgdr:T0:TMUL:LR_MIN' (e.g. sgdr:10:2:0.0001) or "
        f"'step:E1,E2,...' (e.g. step:30,60), got {text!r}"
    )


COUNT_FIELDS = ("max_params", "max_macs")
_SUFFIX = {"k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


def parse_count(value: Any, name: str = "value") -> float:
    """A count given as a number or as text with a K/M/G suffix: 2.5M -> 2500000."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip().lower().replace("_", "").replace(",", "")
    mult = _SUFFIX.get(text[-1:], 1.0)
    if text[-1:] in _SUFFIX:
        text = text[:-1]
    try:
        out = float(text) * mult
    except ValueError:
        raise PgnasError(f"{name} must be a number, optionally with K, M or G (e.g. 20M), got {value!r}") from None
    if not math.isfinite(out) or out <= 0:
        raise PgnasError(f"{name} must be > 0, got {value!r}")
    return out


def _toml_value(v: Any) -> str:
    """A flat TOML value (the configuration holds strings, numbers and booleans only)."""
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if v != v else ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string: JSON's escapes are TOML's
    raise TypeError(f"cannot write {type(v).__name__} to the configuration file")


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _coerce(key: str, value: Any, f: dataclasses.Field, source: str) -> Any:
    """Check a TOML/flag value against the field's type; ints are accepted for floats."""
    typ = str(f.type)
    if value is None:
        return None
    if key in COUNT_FIELDS:
        return parse_count(value, key)
    if "bool" in typ:
        if isinstance(value, bool):
            return value
        raise PgnasError(f"{source}: {key} must be true or false, got {value!r}")
    if typ.startswith("int"):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise PgnasError(f"{source}: {key} must be an integer, got {value!r}")
    if typ.startswith("float"):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value) if not (key == "val_size" and isinstance(value, int)) else value
        raise PgnasError(f"{source}: {key} must be a number, got {value!r}")
    if typ.startswith("str"):
        if isinstance(value, str):
            return value
        raise PgnasError(f"{source}: {key} must be a string, got {value!r}")
    if "int" in typ and isinstance(value, int) and not isinstance(value, bool):
        return value
    raise PgnasError(f"{source}: {key} has an unsupported value {value!r}")
