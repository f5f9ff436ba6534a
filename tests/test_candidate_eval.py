"""Faster candidate evaluation is exact: tiling, racing at full split, sharding, BN re-estimation."""

import pytest
import torch

import pgnas
from pgnas.search.scorer import CandidateScorer
from pgnas.search.scoring import correct_counts
from pgnas.search.ranking import rank


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("ce") / "run"
    cfg = pgnas.SearchConfig(supernet="shake-shake-8-2x16d", epochs=3, candidates=2, out=str(out), lambda_w=200.0)
    res = pgnas.search(cfg, progress=False)
    from pgnas.data import load_dataset

    return res, load_dataset("digits")


def test_tiled_candidates_score_exactly_like_one_by_one(trained):
    res, data = trained
    x, y = data.eval_tensors("val")
    masks = [res.posterior.sample_candidate(i, 0) for i in range(10)]
    one = correct_counts(res.model, res.posterior, masks, x, y, tile=1, batch_size=97)
    tiled = correct_counts(res.model, res.posterior, masks, x, y, tile=4, batch_size=128)
    assert one == tiled
    assert len(set(one)) > 1  # the candidates really differ


def test_tiled_forward_equals_per_candidate_forward_including_removed_branches(trained):
    res, data = trained
    post, model = res.posterior, res.model.eval()
    x = data.eval_tensors("val")[0][:16]
    masks = [post.sample_candidate(i, 0) for i in range(3)]
    # force a removed branch in one candidate and a single kept channel in another
    masks[0]["stages.1.0.branch1.conv1"] = torch.zeros_like(masks[0]["stages.1.0.branch1.conv1"])
    single = torch.zeros_like(masks[1]["fc"])
    single[3] = True
    masks[1]["fc"] = single
    with torch.no_grad():
        post.set_candidates(masks)
        tiled = model(x.repeat(3, 1, 1, 1)).view(3, 16, -1)
        for j, m in enumerate(masks):
            post.set_candidate(m)
            assert torch.allclose(tiled[j], model(x), rtol=1e-5, atol=1e-5)
    post.clear_candidate()


def test_racing_with_one_look_is_the_exhaustive_ranking(trained):
    res, data = trained
    scorer = CandidateScorer(res.model, res.posterior, data, seed=3, device=torch.device("cpu"), tile=4)
    exhaustive = scorer.exhaustive(range(12))
    raced = scorer.race(range(12), first=len(data.val_y))
    assert [r["index"] for r in rank(exhaustive)] == [r["index"] for r in rank(raced)]
    assert [r["val_acc"] for r in exhaustive] == [r["val_acc"] for r in raced]


def test_racing_scores_survivors_on_the_whole_split(trained):
    res, data = trained
    scorer = CandidateScorer(res.model, res.posterior, data, seed=3, device=torch.device("cpu"), tile=4)
    n = len(data.val_y)
    exhaustive = {r["index"]: r for r in scorer.exhaustive(range(27))}
    raced = scorer.race(range(27), first=20, keep_min=2)
    survivors = [r for r in raced if r["val_seen"] == n]
    assert len(survivors) >= 2
    for r in survivors:  # exact full-split accuracy for survivors
        assert r["val_acc"] == exhaustive[r["index"]]["val_acc"]
    assert {r["val_seen"] for r in raced} <= {20, 40, 80, 160, n}
    assert rank(raced)[0]["val_seen"] == n


class _Synthetic(CandidateScorer):
    """Racing's decisions on made-up correctness: candidate i is right on image j with
    probability acc_i, most of it shared between candidates (as candidates of one posterior are)."""

    def __init__(self, accs, n, seed):
        g = torch.Generator().manual_seed(seed)
        shared = torch.rand(n, generator=g)  # how hard each image is
        noise = torch.rand(len(accs), n, generator=g)
        own = noise < 0.15  # 15 % of the images: the candidate's own coin
        self.rows = torch.where(own, torch.rand(len(accs), n, generator=g) < torch.tensor(accs)[:, None],
                                shared[None] < torch.tensor(accs)[:, None])
        self.n, self.seed, self.dist = n, seed, __import__("pgnas").search.distributed.Dist()
        self._masks = {}
        self.looked = 0

    def correct(self, indices, examples=None, fp32=False):
        self.looked += len(indices) * (self.n if examples is None else len(examples))
        return {i: self.rows[i] if examples is None else self.rows[i][examples] for i in indices}

    def stats(self, index):
        return {"params": 0}

    def record(self, index, correct, seen):
        return {"index": index, "val_acc": correct / seen, "val_seen": seen, "params": 0}


def test_racing_drops_clearly_worse_candidates_early_and_keeps_the_winner():
    accs = [0.70] + [0.69] * 3 + [0.66] * 6 + [0.55] * 30  # one best, a few close, many clearly worse
    kept_winner, regret = 0, []
    for seed in range(20):
        sc = _Synthetic(accs, 5000, seed)
        full = sc.rows.double().mean(1)
        raced = sc.race(range(len(accs)), delta=0.05)
        best = max(raced, key=lambda r: (r["val_seen"], r["val_acc"]))
        kept_winner += best["index"] == int(full.argmax())
        regret.append(float(full.max() - full[best["index"]]))
        clearly_worse = [r for r in raced if accs[r["index"]] == 0.55]
        assert all(r["val_seen"] <= 625 for r in clearly_worse)  # dropped within the first looks
        assert sc.looked < 0.3 * len(accs) * 5000  # most of the work was saved
    # the exhaustive winner is kept nearly always; when not, a near tie took its place
    assert kept_winner >= 16 and sum(regret) / len(regret) <= 0.001 and max(regret) <= 0.006


def test_bn_recalibration_estimates_candidate_statistics_and_restores_the_supernet(trained):
    from pgnas.data.augment import AugmentSpec
    from pgnas.search.scoring import recalibrate_bn

    res, data = trained
    model, post = res.model, res.posterior
    before = {k: v.clone() for k, v in model.state_dict().items()}
    masks = post.sample_candidate(5, 0)
    recalibrate_bn(model, post, masks, data, batches=1, batch_size=64, device=torch.device("cpu"))
    x, _ = next(iter(data.train_batches(64, torch.Generator().manual_seed(0), "cpu", AugmentSpec())))
    post.set_candidate(masks)
    with torch.no_grad():
        feats = model.stem(x)
    post.clear_candidate()
    assert torch.allclose(model.stem_bn.running_mean, feats.mean((0, 2, 3)), atol=1e-5)
    assert not torch.allclose(model.stem_bn.running_mean, before["stem_bn.running_mean"])
    model.load_state_dict(before)
    # scoring with re-estimation leaves the super-network as it was
    scorer = CandidateScorer(model, post, data, seed=0, device=torch.device("cpu"), bn_recalibrate=2, train_batch_size=64)
    recs = scorer.exhaustive(range(2))
    assert scorer.tile == 1 and all(0 <= r["val_acc"] <= 1 for r in recs)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bn_recalibrated_network_is_the_one_reported_and_exported(tmp_path):
    from torch import nn

    from pgnas.data import load_dataset
    from pgnas.export import load_model
    from pgnas.search.scoring import accuracy, candidate_bn

    cfg = pgnas.SearchConfig(supernet="shake-shake-8-2x16d", epochs=2, candidates=3, top_k=2, bn_recalibrate=2,
                             out=str(tmp_path / "run"))
    res = pgnas.search(cfg, progress=False)
    model, post, sel = res.model, res.posterior, res.selected
    data = load_dataset("digits")
    cpu = torch.device("cpu")
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))  # left as it was
    masks = post.sample_candidate(sel["index"], cfg.seed)
    x = data.eval_tensors("test")[0][:64]
    with torch.no_grad():
        post.set_candidate(masks)
        plain = model.eval()(x)
        post.clear_candidate()
        with candidate_bn(model, post, masks, data, 2, cfg.batch_size, cpu):
            post.set_candidate(masks)
            recal = model(x)
            test_acc = accuracy(model, data, "test", 500, cpu)
            post.clear_candidate()
        assert torch.allclose(model(x), model(x))  # the super-network's statistics are back
    assert not torch.allclose(plain, recal, atol=1e-3)  # re-estimation changes the network
    assert sel["test_acc"] == test_acc
    exported = load_model(res.run_dir / "model.pt")
    assert torch.allclose(exported.net(x), recal, rtol=1e-4, atol=1e-4)


def test_resume_with_other_scoring_rescores_every_candidate(tmp_path):
    import json

    cfg = pgnas.SearchConfig(supernet="shake-shake-8-2x16d", epochs=1, candidates=3, top_k=1, out=str(tmp_path / "run"))
    first = pgnas.search(cfg, progress=False)
    again = pgnas.resume(cfg.out, bn_recalibrate=2, progress=False)
    assert again.summary["scoring"]["bn_recalibrate"] == 2
    assert json.loads((first.run_dir / "scoring.json").read_text())["bn_recalibrate"] == 2
    from pgnas.data import load_dataset

    scorer = CandidateScorer(again.model, again.posterior, load_dataset("digits"), seed=0, device=torch.device("cpu"),
                             bn_recalibrate=2, train_batch_size=cfg.batch_size)
    assert [r["val_acc"] for r in again.candidates] == [r["val_acc"] for r in scorer.exhaustive(range(3))]
    assert [r["val_acc"] for r in again.candidates] != [r["val_acc"] for r in first.candidates]


def test_selection_never_reads_the_test_split(trained):
    from pgnas.data import load_dataset

    res, _ = trained

    class NoTest:
        def __init__(self, data):
            self.data = data

        def __getattr__(self, name):
            return getattr(self.data, name)

        def eval_batches(self, split, *a, **kw):
            if split != "val":
                raise AssertionError(f"selection read the {split} split")
            return self.data.eval_batches(split, *a, **kw)

        def eval_tensors(self, split, *a, **kw):
            if split != "val":
                raise AssertionError(f"selection read the {split} split")
            return self.data.eval_tensors(split, *a, **kw)

    data = NoTest(load_dataset("digits"))
    scorer = CandidateScorer(res.model, res.posterior, data, seed=1, device=torch.device("cpu"), tile=3)
    assert len(scorer.exhaustive(range(5))) == 5
    assert len(scorer.race(range(9), first=100)) == 9
    with pytest.raises(AssertionError, match="test split"):
        list(data.eval_batches("test", 10))
