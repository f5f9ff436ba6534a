"""The test split, for reporting only (it never selects): the selected candidates' test accuracy,
the mean network's, and calibration (accuracy, NLL, ECE) of the selected candidate, the mean
network and the ensemble of the top candidates. Each candidate is evaluated as exactly the network
that was scored (its BN statistics re-estimated when the scoring re-estimated them)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from pgnas.search.calibration import average_probs, calibration_metrics
from pgnas.search.run import Run
from pgnas.search.scoring import accuracy, candidate_bn, predict_probs
from pgnas.search.select import ENSEMBLE_K, Selection


@dataclass
class TestReport:
    top: list[dict]  # the top-k candidates within the budgets, with test_acc, per-layer kept fractions
    calibration: dict[str, dict]
    supernet_val_acc: float
    supernet_test_acc: float


def test_report(run: Run, selection: Selection) -> TestReport:
    cfg, model, posterior, data, device = run.cfg, run.model, run.posterior, run.data, run.device
    scorer, batch = selection.scorer, cfg.eval_batch(device.type)
    top, member_probs, labels = [], [], None
    for rec in selection.eligible[: max(cfg.top_k, ENSEMBLE_K)]:
        masks = scorer.masks(rec["index"])
        with candidate_bn(model, posterior, masks, data, cfg.bn_recalibrate, cfg.batch_size, device):
            posterior.set_candidate(masks)
            probs, labels = predict_probs(model, data, "test", batch, device)
            posterior.clear_candidate()
        member_probs.append(probs)
        if len(top) < cfg.top_k:
            stats = scorer.stats(rec["index"])
            top.append({**rec, "test_acc": _acc(probs, labels), "layers": {k: round(v, 4) for k, v in stats["layers"].items()},
                        "removed_layer_names": stats["removed_layer_names"]})
    # the mean network (inputs x (1 - p)) of the posterior the candidates came from (tempered: p'),
    # with its own BN statistics when the candidates' were re-estimated
    with posterior.shifted(cfg.logit_shift), candidate_bn(model, posterior, None, data, cfg.bn_recalibrate, cfg.batch_size, device):
        supernet_val = accuracy(model, data, "val", batch, device)
        mean_probs, _ = predict_probs(model, data, "test", batch, device)
    calibration = {
        "selected": calibration_metrics(member_probs[0], labels),
        "mean_network": calibration_metrics(mean_probs, labels),
        f"ensemble_top{len(member_probs)}": calibration_metrics(average_probs(member_probs), labels),
    }
    return TestReport(top, calibration, supernet_val, _acc(mean_probs, labels))


def _acc(probs: Tensor, labels: Tensor) -> float:
    return float((probs.argmax(1) == labels).double().mean())
