"""Doc2Vec embeddings: item tokens trained, seeded, workers taken from the config."""
import numpy as np
import pandas as pd

from dser_spark.config import EmbedConfig
from dser_spark.embed import embed_all, embed_sequences, train_sequence_model


def _sequences(n_users=40, seed=0):
    rng = np.random.default_rng(seed)
    groups = [np.arange(100, 120), np.arange(200, 220)]
    return np.arange(1, n_users + 1), [rng.choice(groups[u % 2], 12, replace=False) for u in range(n_users)]


def test_item_vectors_are_trained_seeded_and_zero_for_unseen_items():
    users, seqs = _sequences()
    universe = np.concatenate([np.arange(100, 120), np.arange(200, 220), [999]])  # 999: nobody's
    cfg = EmbedConfig(vector_size=8, epochs=5)
    a = embed_sequences(users, seqs, universe, cfg, seed=3)
    b = embed_sequences(users, seqs, universe, cfg, seed=3)
    assert np.array_equal(a.item_vectors, b.item_vectors) and np.array_equal(a.user_vectors, b.user_vectors)
    assert np.count_nonzero(a.item_vectors[-1]) == 0 and np.count_nonzero(a.item_out_vectors[-1]) == 0
    assert np.count_nonzero(a.item_vectors[:-1], axis=1).all()  # dbow_words=1: every seen token trained
    assert a.user_vectors.shape == (len(users), 8)


def test_workers_reach_gensim():
    users, seqs = _sequences()
    assert train_sequence_model(users, seqs, EmbedConfig(vector_size=8, epochs=1, workers=2), seed=0).workers == 2
    assert train_sequence_model(users, seqs, EmbedConfig(vector_size=8, epochs=1), seed=0).workers == 1


def test_fits_run_all_at_once_give_the_vectors_of_fits_run_one_by_one():
    users, seqs = _sequences(n_users=60)
    inputs = {"select": (users, [s[:-2] for s in seqs]), "eval": (users, [s[:-1] for s in seqs]),
              "serve": (users, seqs)}
    items = pd.DataFrame({"item_id": [100, 101, 200], "title": ["Heat", "Big", "Up"], "genres": [["A"], ["B"], []]})
    universe = np.concatenate([np.arange(100, 120), np.arange(200, 220)])
    cfg = EmbedConfig(vector_size=8, epochs=20, content_vector_size=4)
    together, content = embed_all(inputs, items, universe, cfg, seed=5)
    one_by_one, content_alone = embed_all(inputs, items, universe, cfg, seed=5, at_once=1)
    assert list(together) == ["select", "eval", "serve"] and content.shape == (3, 4)
    assert np.array_equal(content, content_alone)
    for scope, fit in together.items():
        assert np.array_equal(fit.item_vectors, one_by_one[scope].item_vectors)
        assert np.array_equal(fit.user_vectors, one_by_one[scope].user_vectors)
    assert not np.array_equal(together["select"].item_vectors, together["serve"].item_vectors)  # each its scope
