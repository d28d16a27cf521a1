"""Classifier heads: sequence use, lengths, padding, seeding, time pooling, persistence."""
import io

import joblib
import numpy as np
import pytest

from classify.heads import LSTMHead, PooledHead, make_head, mean_pool, time_pool

# small, quick LSTM settings for tests (the defaults are sized for 20k-video training sets)
FAST = dict(hidden=16, proj=16, batch_size=32, max_epochs=40, patience=6, lr=5e-3, dropout=0.0)


def order_task(n, seed, dim=6, width=10):
    """Class 0: +u for the first half of the valid steps, then -u; class 1: the reverse.

    Lengths are even, so every video's mean over its valid steps is the same in both classes
    (up to noise): only the order of the steps tells them apart.
    """
    rng = np.random.default_rng(seed)
    u = np.ones(dim, np.float32) / np.sqrt(dim) * 2
    y = rng.integers(0, 2, n)
    lengths = rng.choice([4, 6, 8], size=n)
    X = np.zeros((n, width, dim), np.float32)
    for i in range(n):
        h = lengths[i] // 2
        sign = 1 if y[i] == 0 else -1
        X[i, :h] = sign * u
        X[i, h:lengths[i]] = -sign * u
        X[i, :lengths[i]] += 0.3 * rng.standard_normal((lengths[i], dim)).astype(np.float32)
    return X, lengths, y


def padded(rng, lengths, width, dim, offsets):
    """Zero-padded `[n, width, dim]`: video i is noise plus offsets[i] over its first lengths[i] steps."""
    X = np.zeros((len(lengths), width, dim), np.float32)
    for i, length in enumerate(lengths):
        X[i, :length] = rng.standard_normal((length, dim)) + offsets[i]
    return X


def with_garbage_padding(X, lengths, seed=5):
    rng = np.random.default_rng(seed)
    G = X.copy()
    for i, length in enumerate(lengths):
        G[i, length:] = 50 * rng.standard_normal(G[i, length:].shape)
    return G


@pytest.fixture(scope="module")
def order_data():
    return order_task(500, 0), order_task(150, 1), order_task(300, 2)


@pytest.fixture(scope="module")
def fitted_lstm(order_data):
    (X, L, y), (Xv, Lv, yv), _ = order_data
    return LSTMHead(seed=0, **FAST).fit(X, L, y, Xv, Lv, yv, n_classes=2)


def test_lstm_learns_order_that_mean_pooling_cannot(order_data, fitted_lstm):
    (X, L, y), (Xv, Lv, yv), (Xt, Lt, yt) = order_data
    lstm_acc = (fitted_lstm.predict(Xt, Lt) == yt).mean()
    linear = make_head("linear", seed=0).fit(X, L, y, Xv, Lv, yv, n_classes=2)
    linear_acc = (linear.predict(Xt, Lt) == yt).mean()
    assert lstm_acc > 0.9, lstm_acc
    assert linear_acc < 0.65, linear_acc  # same mean in both classes: chance


def test_lstm_reads_each_video_up_to_its_length(order_data, fitted_lstm):
    _, _, (Xt, Lt, yt) = order_data
    p = fitted_lstm.predict_proba(Xt, Lt)
    # garbage in the padding changes nothing
    np.testing.assert_allclose(fitted_lstm.predict_proba(with_garbage_padding(Xt, Lt), Lt), p, rtol=0, atol=1e-6)
    # nor does more (or less) zero padding
    wider = np.concatenate([Xt, np.zeros((len(Xt), 5, Xt.shape[2]), np.float32)], axis=1)
    np.testing.assert_allclose(fitted_lstm.predict_proba(wider, Lt), p, rtol=0, atol=1e-6)
    np.testing.assert_allclose(fitted_lstm.predict_proba(Xt[:, :int(Lt.max())], Lt), p, rtol=0, atol=1e-6)
    # but the lengths matter: reading only the first half of each video loses the answer
    half = (fitted_lstm.predict(Xt, Lt // 2) == yt).mean()
    assert half < 0.7, half
    # and the caller's array is left alone
    before = Xt.copy()
    fitted_lstm.predict_proba(Xt, Lt)
    np.testing.assert_array_equal(Xt, before)


def test_lstm_training_ignores_padding(order_data):
    (X, L, y), (Xv, Lv, yv), (Xt, Lt, _) = order_data
    params = dict(FAST, max_epochs=3)
    a = LSTMHead(seed=1, **params).fit(X, L, y, Xv, Lv, yv, n_classes=2)
    b = LSTMHead(seed=1, **params).fit(with_garbage_padding(X, L), L, y, with_garbage_padding(Xv, Lv, 6), Lv, yv,
                                       n_classes=2)
    np.testing.assert_allclose(b.mean_, a.mean_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.predict_proba(Xt, Lt), a.predict_proba(Xt, Lt), rtol=0, atol=1e-5)


def test_lstm_same_seed_same_probabilities(order_data):
    (X, L, y), (Xv, Lv, yv), (Xt, Lt, _) = order_data
    params = dict(FAST, max_epochs=4)
    import torch

    torch.manual_seed(100)
    p1 = LSTMHead(seed=3, **params).fit(X, L, y, Xv, Lv, yv, n_classes=2).predict_proba(Xt, Lt)
    torch.manual_seed(200)  # the global generator's state must not matter, only the head's seed
    p2 = LSTMHead(seed=3, **params).fit(X, L, y, Xv, Lv, yv, n_classes=2).predict_proba(Xt, Lt)
    p3 = LSTMHead(seed=4, **params).fit(X, L, y, Xv, Lv, yv, n_classes=2).predict_proba(Xt, Lt)
    np.testing.assert_array_equal(p1, p2)
    assert not np.array_equal(p1, p3)  # the seed is really used
    assert p1.shape == (len(Xt), 2)
    np.testing.assert_allclose(p1.sum(axis=1), 1, atol=1e-6)


def test_lstm_does_not_touch_global_torch_rng(order_data):
    import torch

    (X, L, y), _, _ = order_data
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    LSTMHead(seed=0, **dict(FAST, max_epochs=1)).fit(X, L, y, n_classes=2)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_pooled_heads_seeded_and_padding_free(kind):
    rng = np.random.default_rng(0)
    n, width, dim = 240, 7, 5
    y = np.arange(n) % 3
    lengths = rng.integers(2, width + 1, n)
    X = padded(rng, lengths, width, dim, 1.5 * np.eye(dim)[y])
    p1 = make_head(kind, seed=2).fit(X[:180], lengths[:180], y[:180], n_classes=3).predict_proba(X[180:], lengths[180:])
    head = make_head(kind, seed=2).fit(X[:180], lengths[:180], y[:180], n_classes=3)
    p2 = head.predict_proba(X[180:], lengths[180:])
    np.testing.assert_array_equal(p1, p2)
    assert (p1.argmax(1) == y[180:]).mean() > 0.8
    G = with_garbage_padding(X[180:], lengths[180:])
    np.testing.assert_allclose(head.predict_proba(G, lengths[180:]), p2, atol=1e-9)


def test_pooled_head_gives_zero_to_classes_it_never_saw():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 3, 4)).astype(np.float32)
    y = np.arange(60) % 2  # classes 0 and 1 only
    p = PooledHead("linear").fit(X, np.full(60, 3), y, n_classes=3).predict_proba(X, np.full(60, 3))
    assert p.shape == (60, 3)
    np.testing.assert_array_equal(p[:, 2], 0)


def naive_time_pool(X, lengths, max_steps):
    w = -(-X.shape[1] // max_steps)
    steps = -(-X.shape[1] // w)
    out = np.zeros((len(X), steps, X.shape[2]))
    for i, length in enumerate(lengths):
        for s in range(steps):
            valid = X[i, s * w:min((s + 1) * w, length)]
            if len(valid):
                out[i, s] = valid.mean(axis=0)
    return out, -(-np.asarray(lengths) // w)


@pytest.mark.parametrize("width,max_steps", [(79, 16), (17, 16), (10, 3), (8, 8)])
def test_time_pool_averages_valid_steps_only(width, max_steps):
    rng = np.random.default_rng(width)
    lengths = rng.integers(1, width + 1, 30)
    lengths[0] = width
    X = rng.standard_normal((30, width, 4)).astype(np.float32)
    for i, length in enumerate(lengths):
        X[i, length:] = 0  # what cache.load gives
    pooled, new_lengths = time_pool(X, lengths, max_steps)
    expected, expected_lengths = naive_time_pool(X, lengths, max_steps)
    assert pooled.shape[1] <= max_steps
    np.testing.assert_allclose(pooled, expected, atol=1e-5)
    np.testing.assert_array_equal(new_lengths, expected_lengths)
    # and the same valid steps when the padding holds garbage
    pooled_g, _ = time_pool(with_garbage_padding(X, lengths), lengths, max_steps)
    valid = np.arange(pooled_g.shape[1])[None, :] < expected_lengths[:, None]
    np.testing.assert_allclose(pooled_g * valid[..., None], expected, atol=1e-5)


def test_mean_pool_uses_valid_steps():
    rng = np.random.default_rng(1)
    lengths = np.array([1, 3, 5])
    X = with_garbage_padding(rng.standard_normal((3, 5, 2)).astype(np.float32), lengths)
    expected = np.stack([X[i, :length].mean(axis=0) for i, length in enumerate(lengths)])
    np.testing.assert_allclose(mean_pool(X, lengths), expected, atol=1e-6)


def test_lstm_pools_long_sequences_and_survives_pickling():
    rng = np.random.default_rng(0)
    n, width, dim = 120, 40, 8
    y = np.arange(n) % 2
    lengths = rng.integers(10, width + 1, n)
    X = padded(rng, lengths, width, dim, y[:, None])
    head = LSTMHead(seed=0, **dict(FAST, max_epochs=5, max_steps=8)).fit(X, lengths, y, n_classes=2)
    p = head.predict_proba(X, lengths)
    buf = io.BytesIO()
    joblib.dump(head, buf)
    buf.seek(0)
    again = joblib.load(buf)
    np.testing.assert_array_equal(again.predict_proba(X, lengths), p)
    assert (p.argmax(1) == y).mean() > 0.9


def test_make_head_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown head"):
        make_head("transformer")
    with pytest.raises(ValueError):
        PooledHead("svm")
    assert make_head("lstm", seed=7, hidden=8).get_params()["hidden"] == 8


def test_lstm_restores_the_torch_thread_setting(order_data):
    import torch

    (X, L, y), _, _ = order_data
    before = torch.get_num_threads()
    head = LSTMHead(seed=0, **dict(FAST, max_epochs=1, threads=1)).fit(X[:64], L[:64], y[:64], n_classes=2)
    head.predict_proba(X[:8], L[:8])
    assert torch.get_num_threads() == before
    assert head.get_params()["threads"] == 1


# ----------------------------------------------------------------------------- scikit-learn estimators


@pytest.mark.parametrize("name", ["lstm", "linear", "mlp"])
def test_heads_are_sklearn_estimators_with_every_init_argument_as_a_parameter(name):
    import inspect

    from sklearn.base import BaseEstimator, clone

    head = make_head(name, seed=4)
    assert isinstance(head, BaseEstimator)
    init = [p for p in inspect.signature(type(head).__init__).parameters if p != "self"]
    params = head.get_params()
    assert sorted(params) == sorted(init)
    assert all(params[p] is getattr(head, p) for p in init)  # stored unchanged
    copy = clone(head)
    assert type(copy) is type(head) and copy is not head and copy.get_params() == params
    assert copy.set_params(seed=9) is copy and copy.seed == 9 and head.seed == 4
    with pytest.raises(ValueError):
        copy.set_params(no_such_parameter=1)


def test_lstm_set_params_and_clone_train_the_same_head_as_the_constructor(order_data):
    """A head made by `clone` or changed by `set_params` trains exactly like one constructed with
    those parameters (what a run's settings.json records is what was trained)."""
    from sklearn.base import clone

    (X, L, y), (Xv, Lv, yv), (Xt, Lt, _) = order_data
    params = dict(FAST, max_epochs=3)
    direct = LSTMHead(seed=2, **params).fit(X, L, y, Xv, Lv, yv, n_classes=2)
    fitted_clone = clone(direct)
    assert not hasattr(fitted_clone, "net_")  # clone copies parameters, not the fitted state
    fitted_clone.fit(X, L, y, Xv, Lv, yv, n_classes=2)
    changed = LSTMHead(seed=0, **params).set_params(seed=2).fit(X, L, y, Xv, Lv, yv, n_classes=2)
    expected = direct.predict_proba(Xt, Lt)
    np.testing.assert_array_equal(fitted_clone.predict_proba(Xt, Lt), expected)
    np.testing.assert_array_equal(changed.predict_proba(Xt, Lt), expected)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_pooled_clone_trains_the_same_head(kind):
    from sklearn.base import clone

    rng = np.random.default_rng(1)
    y = np.arange(120) % 3
    lengths = rng.integers(2, 6, 120)
    X = padded(rng, lengths, 6, 4, np.eye(4)[y])
    head = make_head(kind, seed=5, C=0.5, alpha=1e-2)
    a = head.fit(X[:90], lengths[:90], y[:90], n_classes=3).predict_proba(X[90:], lengths[90:])
    b = clone(head).fit(X[:90], lengths[:90], y[:90], n_classes=3).predict_proba(X[90:], lengths[90:])
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="kind must be"):
        clone(head).set_params(kind="svm").fit(X[:90], lengths[:90], y[:90], n_classes=3)
