"""Joint heads: a class only the pairing of two modalities shows, missing modalities, padding,
the scikit-learn estimator contract, seeding, bad input."""
import io
import inspect
import warnings

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone

from classify import joint_nets
from classify.heads import make_head, time_pool
from classify.joint import (JOINT_RULES, CrossAttentionFusion, EarlyFusion, TensorFusion, gather, make_joint,
                            missing_counts, window_pool)
from features.cache import Features

ESTIMATORS = (EarlyFusion, TensorFusion, CrossAttentionFusion)
# the same prototypes in every split: colour red, blue, green; tone low, high, and a distinct one
_PROTO = np.random.default_rng(123)
COLOUR = _PROTO.standard_normal((3, 8)).astype(np.float32)
TONE = _PROTO.standard_normal((3, 6)).astype(np.float32)


def pairing_task(n, seed, missing_tone=0.0, missing_colour=0.0):
    """Class 0: red + low or blue + high; class 1: red + high or blue + low; class 2: green and the
    distinct tone (either modality alone shows it). The six (class, colour) cases come equally
    often, so one modality alone can be right on 2/3 of the videos at most. Each video: 3-6
    noisy colour steps of 8 values and 2-4 noisy tone steps of 6 values, zero-padded to 6 and 4
    steps; a fraction of the videos lack the tone (or the colour: length 0, all zeros)."""
    rng = np.random.default_rng(seed)
    cases = np.array([(0, 0), (0, 1), (1, 0), (1, 1), (2, 2), (2, 2)])[rng.permutation(np.arange(n) % 6)]
    y, colour = cases[:, 0], cases[:, 1]
    tone = np.where(y == 2, 2, colour ^ (y == 1))
    la, lb = rng.integers(3, 7, n), rng.integers(2, 5, n)
    gone = rng.random(n)
    lb[gone < missing_tone] = 0
    la[(gone >= missing_tone) & (gone < missing_tone + missing_colour)] = 0
    A, B = np.zeros((n, 6, 8), np.float32), np.zeros((n, 4, 6), np.float32)
    for i in range(n):
        A[i, :la[i]] = COLOUR[colour[i]] + rng.standard_normal((la[i], 8))
        B[i, :lb[i]] = TONE[tone[i]] + rng.standard_normal((lb[i], 6))
    return {"colour": (A, la), "tone": (B, lb)}, y


def accuracy(head, split):
    X, y = split
    return float((head.predict(X) == y).mean())


@pytest.fixture(scope="module")
def task():
    return {"train": pairing_task(600, 0, missing_tone=0.1), "val": pairing_task(200, 1, missing_tone=0.1),
            "test": pairing_task(450, 2),
            # videos whose partner modality is missing, of every class
            "no_tone": pairing_task(150, 3, missing_tone=1.0), "no_colour": pairing_task(150, 4, missing_colour=1.0)}


@pytest.fixture(scope="module")
def fitted(task):
    return {rule: make_joint(rule, seed=0, lr=3e-3).fit(*task["train"], *task["val"]) for rule in JOINT_RULES}


@pytest.fixture(scope="module")
def singles(task):
    """One `mlp` head of classify.heads per modality, trained on the videos that have it."""
    (X, y), (Xv, yv) = task["train"], task["val"]
    heads = {}
    for m in X:
        has, has_v = X[m][1] > 0, Xv[m][1] > 0
        heads[m] = make_head("mlp", seed=0).fit(X[m][0][has], X[m][1][has], y[has], Xv[m][0][has_v], Xv[m][1][has_v],
                                                yv[has_v], n_classes=3)
    return heads


def test_joint_heads_learn_a_pairing_that_single_modalities_and_late_fusion_cannot(task, fitted, singles):
    X, y = task["test"]
    probas = {m: singles[m].predict_proba(*X[m]) for m in X}
    single = {m: float((p.argmax(1) == y).mean()) for m, p in probas.items()}
    late = float((np.mean(list(probas.values()), axis=0).argmax(1) == y).mean())
    joint = {rule: accuracy(head, task["test"]) for rule, head in fitted.items()}
    print(f"single {single}, late mean {late:.3f}, joint {joint}")
    for m, acc in single.items():
        assert 0.6 <= acc <= 0.7, (m, acc)  # class 2 right, classes 0 and 1 a coin toss: 2/3
    assert late <= 0.7, late
    for rule in JOINT_RULES:
        assert joint[rule] >= 0.85, (rule, joint)
        assert joint[rule] >= late + 0.15, (rule, joint, late)


@pytest.mark.parametrize("rule", JOINT_RULES)
def test_a_video_is_classified_from_the_modalities_it_has(task, fitted, rule):
    head = fitted[rule]
    for split in ("no_tone", "no_colour"):
        X, y = task[split]
        pred = head.predict(X)
        assert (pred[y == 2] == 2).mean() >= 0.95, (rule, split, pred[y == 2])
        # without its partner a pairing class cannot be told, but it is not taken for class 2 either
        assert (pred[y != 2] == 2).mean() <= 0.1, (rule, split)


@pytest.mark.parametrize("rule", JOINT_RULES)
def test_padding_and_absent_modalities_are_never_read(task, fitted, rule):
    head = fitted[rule]
    X, _ = task["train"]
    X = {m: (x[:120], lengths[:120]) for m, (x, lengths) in X.items()}
    p = head.predict_proba(X)
    assert p.shape == (120, 3) and np.allclose(p.sum(1), 1)
    rng = np.random.default_rng(7)
    garbage = {}
    for m, (x, lengths) in X.items():
        noisy = x.copy()
        pad = np.arange(x.shape[1])[None, :] >= lengths[:, None]  # includes every step of an absent modality
        noisy[pad] = 100 * rng.standard_normal((int(pad.sum()), x.shape[2]))
        noisy[pad.nonzero()[0][:3], pad.nonzero()[1][:3]] = [[np.nan], [np.inf], [-np.inf]]
        garbage[m] = (noisy, lengths)
    assert (X["tone"][1] == 0).sum() > 5
    np.testing.assert_allclose(head.predict_proba(garbage), p, rtol=0, atol=1e-5)
    wider = {m: (np.concatenate([x, np.zeros((len(x), 5, x.shape[2]), np.float32)], 1), lengths)
             for m, (x, lengths) in X.items()}
    np.testing.assert_allclose(head.predict_proba(wider), p, rtol=0, atol=1e-5)
    # nor do the other videos of the call (how wide their batch is padded, which ones lack what)
    for i in range(0, 120, 12):
        alone = {m: (x[i:i + 1], lengths[i:i + 1]) for m, (x, lengths) in X.items()}
        np.testing.assert_allclose(head.predict_proba(alone), p[i:i + 1], rtol=0, atol=1e-5)
    # a modality no video has may be left out altogether
    Xn, _ = task["no_tone"]
    np.testing.assert_allclose(head.predict_proba({"colour": Xn["colour"]}), head.predict_proba(Xn), rtol=0, atol=1e-6)
    # read-only arrays (a memory-mapped cache) are read as they are, without a warning
    frozen = {m: (x.copy(), lengths) for m, (x, lengths) in X.items()}
    for x, _ in frozen.values():
        x.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(head.predict_proba(frozen), p)
    # the caller's arrays are left as they were
    before = {m: x.copy() for m, (x, _) in X.items()}
    head.predict_proba(X)
    for m, (x, _) in X.items():
        np.testing.assert_array_equal(x, before[m])


@pytest.mark.parametrize("cls", ESTIMATORS)
def test_estimator_parameters_round_trip(cls):
    names = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    defaults = cls().get_params()
    assert sorted(defaults) == sorted(names)
    changed = {"seed": 7, "dropout": 0.25, "batch_size": 64, "class_weight": None, "modality_dropout": 0.3}
    head = cls(**changed)
    params = head.get_params()
    assert {k: params[k] for k in changed} == changed
    copy = clone(head)
    assert type(copy) is cls and copy.get_params() == params and copy is not head
    assert cls(**params).get_params() == params
    assert head.set_params(seed=9).seed == 9 and head.get_params()["seed"] == 9
    assert make_joint({EarlyFusion: "early", TensorFusion: "tfn", CrossAttentionFusion: "xattn"}[cls],
                      seed=7).get_params()["seed"] == 7


def test_a_clone_of_a_fitted_head_is_unfitted(fitted):
    copy = clone(fitted["early"])
    assert copy.get_params() == fitted["early"].get_params()
    assert not hasattr(copy, "net_")
    with pytest.raises(ValueError, match="not fitted"):
        copy.predict_proba({"colour": (np.zeros((1, 2, 8), np.float32), np.array([1]))})


@pytest.mark.parametrize("rule", JOINT_RULES)
def test_the_same_seed_gives_the_same_probabilities(task, rule):
    X, y = pairing_task(120, 10, missing_tone=0.2)
    Xv, yv = pairing_task(60, 11, missing_tone=0.2)
    Xt, _ = task["test"]
    quick = dict(max_epochs=3, batch_size=16)
    torch.manual_seed(1234)
    before = torch.rand(3)
    a = make_joint(rule, seed=0, **quick).fit(X, y, Xv, yv).predict_proba(Xt)
    b = make_joint(rule, seed=0, **quick).fit(X, y, Xv, yv).predict_proba(Xt)
    c = make_joint(rule, seed=1, **quick).fit(X, y, Xv, yv).predict_proba(Xt)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    torch.manual_seed(1234)
    assert torch.equal(torch.rand(3), before)  # fit leaves the global torch generator alone


def test_modality_dropout_hides_present_modalities_but_never_all():
    gen = torch.Generator().manual_seed(0)
    present = torch.rand((4000, 4), generator=gen) < 0.6
    present[:500] = torch.tensor([False, True, False, False])  # a single modality: always kept
    kept = joint_nets.drop_modalities(present, 0.5, gen)
    assert not (kept & ~present).any()
    assert torch.equal(kept.any(1), present.any(1))
    assert torch.equal(kept[:500], present[:500])
    full = present.all(1)
    hidden = (present & ~kept)[full].float().mean()
    assert 0.4 < hidden < 0.55, hidden
    assert torch.equal(joint_nets.drop_modalities(present, 0.0, gen), present)


def test_missing_counts():
    X, _ = pairing_task(50, 5, missing_tone=0.3)
    assert missing_counts(X) == {"colour": 0, "tone": int((X["tone"][1] == 0).sum())}
    assert missing_counts(X)["tone"] > 0


def test_gather_aligns_modalities_by_video_id():
    rng = np.random.default_rng(0)
    rgb = Features(["a", "b", "c"], rng.standard_normal((3, 4, 5)).astype(np.float32), np.array([4, 2, 3]))
    audio = Features(["c", "a"], rng.standard_normal((2, 6, 2)).astype(np.float32), np.array([5, 6]))
    X = gather({"rgb": rgb, "audio": audio}, ["c", "b", "a"])
    np.testing.assert_array_equal(X["rgb"][0], rgb.x[[2, 1, 0]])
    np.testing.assert_array_equal(X["rgb"][1], [3, 2, 4])
    np.testing.assert_array_equal(X["audio"][0], np.stack([audio.x[0], np.zeros((6, 2)), audio.x[1]]))
    np.testing.assert_array_equal(X["audio"][1], [5, 0, 6])
    assert missing_counts(X) == {"rgb": 0, "audio": 1}


def test_a_fitted_head_pickles(task, fitted):
    X, _ = task["test"]
    for rule, head in fitted.items():
        buffer = io.BytesIO()
        joblib.dump(head, buffer)
        buffer.seek(0)
        np.testing.assert_array_equal(joblib.load(buffer).predict_proba(X), head.predict_proba(X))


def test_bad_input_gets_one_clear_message(fitted):
    head = fitted["early"]
    X, y = pairing_task(20, 6)
    (A, la), (B, lb) = X["colour"], X["tone"]
    cases = [
        ({"colour": (A, la), "tone": (B[:10], lb[:10])}, "'tone' has 10 videos but 'colour' has 20"),
        ({"colour": (A, la), "sound": (B, lb)}, "'sound' was not in training"),
        ({"colour": (A[:, :, :5], la)}, "5 dimensions, the head was trained on 8"),
        ({"colour": (A, la + 10)}, "outside 0..6"),
        ({"colour": (A, la.astype(float))}, "lengths must be 20 integers"),
        ({"colour": (A, np.where(np.arange(20) < 3, 0, la)), "tone": (B, np.where(np.arange(20) < 3, 0, lb))},
         r"3 video\(s\) have none of the modalities colour, tone \(rows \[0, 1, 2\]\)"),
        ([A, la], "give a dict"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            head.predict_proba(bad)
    nan = A.copy()
    nan[4, 0, 1] = np.nan
    with pytest.raises(ValueError, match=r"training features \(colour\): 1 video\(s\) have NaN"):
        EarlyFusion().fit({"colour": (nan, la), "tone": (B, lb)}, y)
    with pytest.raises(ValueError, match="no training video has 'tone'"):
        EarlyFusion().fit({"colour": (A, la), "tone": (B, np.zeros_like(lb))}, y)
    with pytest.raises(ValueError, match="labels must be 20 class indices"):
        EarlyFusion().fit(X, y[:5])
    with pytest.raises(ValueError, match="give both X_val and y_val"):
        EarlyFusion().fit(X, y, X)
    with pytest.raises(ValueError, match="modality_dropout"):
        EarlyFusion(modality_dropout=1.0).fit(X, y)
    with pytest.raises(ValueError, match="unknown joint rule 'late'"):
        make_joint("late")


@pytest.mark.parametrize("rule", JOINT_RULES)
def test_a_36_video_sample_trains_with_or_without_validation(rule):
    X, y = pairing_task(24, 20, missing_tone=0.2)
    Xv, yv = pairing_task(12, 21, missing_tone=0.2)
    for head in (make_joint(rule, max_epochs=5).fit(X, y, Xv, yv), make_joint(rule, max_epochs=5).fit(X, y)):
        p = head.predict_proba(Xv)
        assert p.shape == (12, 3) and np.isfinite(p).all() and np.allclose(p.sum(1), 1)
        assert 1 <= len(head.history_) <= 5 and 1 <= head.best_epoch_ <= len(head.history_)
    # a class no training video has still gets a column
    assert make_joint(rule, max_epochs=2).fit(X, y, n_classes=5).predict_proba(Xv).shape == (12, 5)


def test_standardisation_uses_the_training_videos_that_have_the_modality():
    X, y = pairing_task(80, 30, missing_tone=0.25)
    head = EarlyFusion(max_epochs=1).fit(X, y)
    x, lengths = X["tone"]
    has = lengths > 0
    pooled = x[has].sum(1) / lengths[has, None]
    np.testing.assert_allclose(head.scale_["tone"][0], pooled.mean(0), atol=1e-5)
    np.testing.assert_allclose(head.scale_["tone"][1], pooled.std(0), atol=1e-5)


def test_tensor_fusion_takes_the_low_rank_form_for_many_modalities():
    X, y = pairing_task(60, 40)
    four = dict(X, colour2=X["colour"], tone2=X["tone"])
    assert TensorFusion(max_epochs=1).fit(X, y).fusion_rank() == 0           # 17 x 17 entries
    auto4 = TensorFusion(max_epochs=1, rank=3).fit(four, y)
    assert auto4.fusion_rank() == 3 and not hasattr(auto4.net_, "tensor_map")  # 17 ** 4 would be 83,521
    assert TensorFusion(max_epochs=1, form="low_rank", rank=2).fit(X, y).fusion_rank() == 2
    assert TensorFusion(max_epochs=1, form="full").fit(four, y).net_.tensor_map.in_features == 17 ** 4


def test_window_pooling_averages_valid_steps_whatever_the_padding():
    rng = np.random.default_rng(0)
    lengths = np.array([12, 7, 1, 0, 9])
    x = rng.standard_normal((5, 12, 3)).astype(np.float32)
    pooled, steps = window_pool(x, lengths, 3)
    expected, expected_steps = time_pool(x, lengths, 4)  # windows of 3 too
    np.testing.assert_allclose(pooled, expected, atol=1e-6)
    np.testing.assert_array_equal(steps, expected_steps)
    junk = x.copy()
    junk[1, 7:] = np.nan
    np.testing.assert_allclose(window_pool(junk, lengths, 3)[0][1], pooled[1], atol=1e-6)


def test_cross_attention_pools_long_sequences_with_the_training_window():
    X, y = pairing_task(60, 50, missing_tone=0.2)
    head = CrossAttentionFusion(max_steps=2, max_epochs=2).fit(X, y)
    assert head.window_ == {"colour": 3, "tone": 2}
    p = head.predict_proba(X)
    for i in range(0, 60, 7):
        alone = {m: (x[i:i + 1], lengths[i:i + 1]) for m, (x, lengths) in X.items()}
        np.testing.assert_allclose(head.predict_proba(alone), p[i:i + 1], rtol=0, atol=1e-5)
