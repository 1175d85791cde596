"""Doc2Vec embeddings: item tokens trained, seeded, workers taken from the config."""
import numpy as np

from dser_spark.config import EmbedConfig
from dser_spark.embed import embed_sequences, train_sequence_model


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
