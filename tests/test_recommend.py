"""Exact top-K: equals brute force, excludes seen items, deterministic ties, subsets, cold start."""
import numpy as np
import pandas as pd
import pytest
import torch

from dser_spark.artifacts import Trained, model_bytes, save_artifacts
from dser_spark.coldstart import infer_vectors, vector_user_parts
from dser_spark.config import Config, EmbedConfig, ImplicitConfig, ModelConfig, RecommendConfig
from dser_spark.model import DSER, Inputs, window_means
from dser_spark.recommend import (INFERRED, MODEL, POPULAR, Popularity, Serving, candidate_items, group_histories,
                                  id_list, recommend_all, user_histories)
from dser_spark.ids import known_each
from dser_spark.scoring import TOP_CHUNK, block_top, merge_top

N_USERS, N_ITEMS = 9, 50


def _trained(seed=0, **model_kw):
    """A small DSER with every weight random (no zero-initialised parts), ids 10, 20, ... and 1, 4, 7, ..."""
    g = torch.Generator().manual_seed(seed)
    inputs = Inputs(torch.randn(N_USERS, 6, generator=g), torch.randn(N_USERS, 2, 6, generator=g),
                    torch.randn(N_ITEMS, 6, generator=g), torch.randn(N_ITEMS, 6, generator=g),
                    torch.randn(N_ITEMS, 3, generator=g), torch.tensor([2, 4]))
    model = DSER(inputs, ModelConfig(gmf_dim=4, mlp_layers=[8, 4], **model_kw)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return Trained(model, np.arange(1, N_USERS + 1) * 10, np.arange(N_ITEMS) * 3 + 1)


def _popularity(trained):
    return Popularity(trained.item_ids, (np.arange(N_ITEMS) * 7) % 5)


def _recent(model, item_ids, history):
    """(W, d) recent windows of one history of item ids, as training computes them (oldest first in)."""
    idx = np.searchsorted(item_ids, history)[::-1][:int(model.windows.max())]
    context = torch.full((1, int(model.windows.max())), -1, dtype=torch.long)
    context[0, :len(idx)] = torch.from_numpy(idx.copy())
    return window_means(model.item_vectors, context, model.windows)[0]


def _brute_force(trained, user_ids, histories, k, items=None, exclude=True):
    """Reference: the model's forward() on every pair with the recent windows of each user's history,
    sorted by (score desc, item id asc)."""
    rows = []
    allowed = set(trained.item_ids if items is None else items)
    with torch.no_grad():
        for uid, s in zip(user_ids, histories):
            u = int(np.searchsorted(trained.user_ids, uid))
            recent = _recent(trained.model, trained.item_ids, s).expand(N_ITEMS, -1, -1)
            logits = trained.model(torch.full((N_ITEMS,), u), torch.arange(N_ITEMS), recent)
            seen = set(s) if exclude else set()
            order = sorted((-float(v), int(trained.item_ids[j])) for j, v in enumerate(logits)
                           if trained.item_ids[j] in allowed and trained.item_ids[j] not in seen)
            rows += [(uid, rank, item) for rank, (_, item) in enumerate(order[:k], start=1)]
    return rows


def _triples(df):
    return list(zip(df.user_id, df["rank"], df.item_id))


@pytest.mark.parametrize("item_block,tower_pairs,user_block", [(7, 5, 2), (16, 64, 3), (0, 0, 256)])
def test_top_k_equals_brute_force_and_excludes_seen(item_block, tower_pairs, user_block):
    trained = _trained()
    users = trained.user_ids[[0, 3, 8]]
    seen = [trained.item_ids[:20], np.array([], dtype=np.int64), trained.item_ids[::2]]
    settings = RecommendConfig(k=10, item_block=item_block, tower_pairs=tower_pairs, user_block=user_block)
    got = Serving(trained, settings, _popularity(trained)).recommend(users, seen)
    assert _triples(got) == _brute_force(trained, users, seen, 10)
    assert set(got.source) == {MODEL}
    for uid, s in zip(users, seen):
        mine = got[got.user_id == uid]
        assert not set(mine.item_id) & set(s)
        assert (np.diff(mine.score.to_numpy()) <= 0).all()
        assert mine["rank"].tolist() == list(range(1, 11))


def test_block_top_and_merge_break_ties_by_column():
    logits = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0, 3.0],     # tie at the boundary
                           [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],     # no tie
                           [0.0, -torch.inf, -torch.inf, -torch.inf, -torch.inf, -torch.inf]])
    vals, cols = block_top(logits, 3)
    assert sorted(cols[0].tolist()) == [1, 2, 4]
    assert sorted(cols[1].tolist()) == [0, 1, 2]
    assert cols[2, 0] == 0 and torch.isinf(vals[2, 1:]).all()
    best = (torch.tensor([[3.0, 1.0]]), torch.tensor([[5, 0]]))
    merged = merge_top(best, (torch.tensor([[3.0, 3.0, 9.0]]), torch.tensor([[8, 6, 7]])), 3)
    assert merged[1].tolist() == [[7, 5, 6]] and merged[0].tolist() == [[9.0, 3.0, 3.0]]


@pytest.mark.parametrize("case", range(40))
def test_pruned_block_top_equals_a_stable_sort_of_wide_rows(case):
    """Rows wide enough to be pruned by chunk maxima (some with a partial last chunk), with ties at every
    level and excluded (-inf) columns, some rows with fewer than k finite values: the top-k set, ordered by
    (value, column), is that of a stable descending sort."""
    g = torch.Generator().manual_seed(case)
    k = int(torch.randint(1, 12, (1,), generator=g))
    n = TOP_CHUNK * 16 * k + int(torch.randint(0, 3 * TOP_CHUNK, (1,), generator=g))
    levels = [3, 50, 10 ** 6][case % 3]  # few distinct values: ties everywhere; many: almost none
    logits = torch.randint(0, levels, (6, n), generator=g).float()
    logits[torch.rand(6, n, generator=g) < torch.rand(6, 1, generator=g)] = -torch.inf
    logits[0, k // 2:] = -torch.inf  # fewer than k finite values
    got = merge_top((torch.empty((6, 0)), torch.empty((6, 0), dtype=torch.long)), block_top(logits, k), k)
    vals, cols = torch.sort(logits, dim=1, descending=True, stable=True)
    assert torch.equal(got[0], vals[:, :k])
    finite = torch.isfinite(vals[:, :k])
    assert torch.equal(got[1][finite], cols[:, :k][finite])


def test_known_each_is_one_lookup_per_array():
    ids = np.array([2, 5, 9, 11])
    got = known_each(ids, [np.array([9, 3, 2]), np.array([], dtype=np.int64), np.array([4]), np.array([11, 5])])
    assert [g.tolist() for g in got] == [[2, 0], [], [], [3, 1]]
    assert known_each(ids, []) == []


def test_ties_are_broken_by_item_id_and_short_lists_are_allowed():
    trained = _trained()
    with torch.no_grad():  # a constant score: every item ties
        for p in trained.model.parameters():
            p.zero_()
    serving = Serving(trained, RecommendConfig(k=10, item_block=8), _popularity(trained))
    got = serving.recommend(trained.user_ids[:2], [trained.item_ids[:45], np.array([], dtype=np.int64)])
    first = got[got.user_id == trained.user_ids[0]]
    assert first.item_id.tolist() == trained.item_ids[45:].tolist()  # only 5 candidates left
    second = got[got.user_id == trained.user_ids[1]]
    assert second.item_id.tolist() == trained.item_ids[:10].tolist()


def test_candidate_subset_and_keeping_seen_items():
    trained = _trained(seed=3)
    users, seen = trained.user_ids[:4], [trained.item_ids[i::4] for i in range(4)]
    items = trained.item_ids[5:40:3]
    serving = Serving(trained, RecommendConfig(k=6, exclude_seen=False, user_block=3), _popularity(trained), items)
    got = serving.recommend(users, seen)
    assert _triples(got) == _brute_force(trained, users, seen, 6, items, exclude=False)
    assert set(got.item_id) <= set(items)
    assert any(set(got[got.user_id == u].item_id) & set(s) for u, s in zip(users, seen))


def test_dot_scoring_is_the_model_without_its_mlp_tower():
    trained = _trained(seed=4)
    users, seen = trained.user_ids, [trained.item_ids[:u // 10] for u in trained.user_ids]
    got = Serving(trained, RecommendConfig(k=5, scoring="dot"), _popularity(trained)).recommend(users, seen)
    with torch.no_grad():
        trained.model.out.weight[0, trained.model.cfg.gmf_dim:] = 0.0  # the MLP's share of the fusion unit
    assert _triples(got) == _brute_force(trained, users, seen, 5)


def test_vector_user_parts_reproduce_the_model_for_known_users():
    model = _trained(seed=5).model
    u = torch.arange(N_USERS)
    with torch.no_grad():
        g, h, lin = model.user_part(u)
        g2, h2, lin2 = vector_user_parts(model, model.user_vectors[u], model.recent_vectors[u])
    assert torch.equal(g2, torch.zeros_like(g))
    assert torch.allclose(h, h2) and torch.allclose(lin, lin2)


def test_infer_vectors_agree_with_gensim_infer_vector():
    from gensim.models.doc2vec import Doc2Vec, TaggedDocument

    rng = np.random.default_rng(0)
    docs = [[str(i) for i in rng.choice(np.arange(0, 30) if d % 2 else np.arange(30, 60), 25)] for d in range(80)]
    d2v = Doc2Vec([TaggedDocument(w, [str(t)]) for t, w in enumerate(docs)], vector_size=16, min_count=1,
                  negative=5, hs=0, dm=0, dbow_words=1, epochs=30, workers=1, seed=1, sample=0)
    vocab = np.array([int(w) for w in d2v.wv.index_to_key])
    order = np.argsort(vocab)
    out, counts = d2v.syn1neg[order], np.array([d2v.wv.get_vecattr(str(i), "count") for i in vocab[order]])
    history = [int(w) for w in docs[3]]  # item id == dense index here (ids 0..59)
    ours = infer_vectors([np.array(history)], out, counts, 30, 5, [[7, 3]])[0]
    theirs = d2v.infer_vector(docs[3], epochs=30)

    def cos(a, b):
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    assert cos(ours, theirs) > 0.9 and cos(ours, d2v.dv["3"]) > 0.8
    assert np.array_equal(ours, infer_vectors([np.array(history)], out, counts, 30, 5, [[7, 3]])[0])


def test_cold_users_are_inferred_and_users_without_history_get_the_popular_list():
    trained = _trained(seed=6)
    pop = _popularity(trained)
    trained.config = Config(embed=EmbedConfig(epochs=5))  # inference settings travel with the model
    serving = Serving(trained, RecommendConfig(k=4), pop)
    new_history = trained.item_ids[[3, 9, 27]]
    histories = [trained.item_ids[:2], new_history, np.array([], dtype=np.int64),
                 np.array([2, 5], dtype=np.int64)]  # 2 and 5 are not in the model
    users = np.array([10, 777, 778, 779])
    got = serving.recommend(users, histories)
    sources = got.groupby("user_id").source.agg(set).to_dict()
    assert sources == {10: {MODEL}, 777: {INFERRED}, 778: {POPULAR}, 779: {POPULAR}}
    inferred = got[got.user_id == 777]
    assert inferred["rank"].tolist() == [1, 2, 3, 4] and not set(inferred.item_id) & set(new_history)
    popular = got[got.user_id == 778]
    counts = pop.counts_of(trained.item_ids)
    expected = sorted(trained.item_ids, key=lambda i: (-counts[trained.item_ids == i][0], i))[:4]
    assert popular.item_id.tolist() == expected
    assert np.allclose(popular.score, [counts[trained.item_ids == i][0] / N_USERS for i in expected])
    pd.testing.assert_frame_equal(got, serving.recommend(users, histories))


def test_histories_stream_whole_users_across_batches():
    rows = pd.DataFrame({"user_id": [1, 1, 1, 2, 3, 3, 3, 3, 4, 5, 5],
                         "item_id": [7, 5, 9, 4, None, 1, 2, 3, None, 8, 6], "t": range(11),
                         "rating": [1.0, 2, 3, 4, None, 5, 4, 3, None, 2, 1]})
    users, hist, ratings = group_histories(rows)
    assert users.tolist() == [1, 2, 3, 4, 5]
    assert [h.tolist() for h in hist] == [[7, 5, 9], [4], [1, 2, 3], [], [8, 6]]
    assert [r.tolist() for r in ratings] == [[1, 2, 3], [4], [5, 4, 3], [], [2, 1]]
    for size in (1, 2, 3, 5, 11):
        batches = (rows.iloc[i:i + size] for i in range(0, len(rows), size))
        chunks = list(user_histories(batches, min_users=2))
        assert np.concatenate([c.user_ids for c in chunks]).tolist() == users.tolist()
        assert [h.tolist() for c in chunks for h in c.items] == [h.tolist() for h in hist]
        assert all(len(c.user_ids) >= 2 for c in chunks[:-1])


@pytest.mark.parametrize("min_rating", [0.0, 3.0])
def test_recommend_all_through_spark_matches_in_process(spark, tmp_path, min_rating):
    """Ratings 1..5: with the model's ``implicit.min_rating`` 0 every interaction is a positive (the ratings
    stay in the JVM); with 3 the low ratings are excluded but leave the user's state."""
    trained = _trained(seed=7)
    trained.config = Config(embed=EmbedConfig(epochs=3), implicit=ImplicitConfig(min_rating=min_rating))
    save_artifacts(trained, trained.config, tmp_path / "m")
    rows = [(int(u), int(i), j, float(1 + (j * 3 + int(u)) % 5)) for u in [*trained.user_ids, 555] for j, i in
            enumerate(trained.item_ids[int(u) % 7:int(u) % 7 + 3 + int(u) // 40])]
    inter = spark.createDataFrame(rows, "user_id int, item_id int, t int, rating float").selectExpr(
        "user_id", "item_id", "rating", "timestamp_seconds(t) AS ts")
    settings = RecommendConfig(k=5, user_block=4, partitions=3)
    items = trained.item_ids[::2]
    users = spark.createDataFrame([(int(u),) for u in [10, 40, 90, 555, 999]], "user_id int")
    got = recommend_all(spark, model_bytes(tmp_path / "m"), inter, settings, users, items).toPandas()
    pdf = pd.DataFrame(rows, columns=["user_id", "item_id", "t", "rating"])
    pop = Popularity(*[np.asarray(a) for a in zip(*sorted(pdf.groupby("item_id").size().items()))])
    want_users = np.array([10, 40, 90, 555, 999])
    mine = [pdf[pdf.user_id == u].sort_values("t") for u in want_users]
    hist = [m.item_id.to_numpy(np.int64) for m in mine]
    serving = Serving(trained, settings, pop, items)
    want = serving.recommend(want_users, hist, [m.rating.to_numpy(np.float32) for m in mine])
    every_one_positive = serving.recommend(want_users, hist)
    assert want.equals(every_one_positive) == (min_rating == 0)  # the ratings matter when they filter
    key = ["user_id", "rank"]
    got, want = (d.sort_values(key).reset_index(drop=True) for d in (got, want))
    pd.testing.assert_frame_equal(got[["user_id", "rank", "item_id", "source"]],
                                  want[["user_id", "rank", "item_id", "source"]], check_dtype=False)
    assert np.allclose(got.score, want.score, atol=1e-6)
    assert dict(got.groupby("source").user_id.nunique()) == {MODEL: 3, INFERRED: 1, POPULAR: 1}


def test_id_lists_come_from_a_list_a_table_or_a_path(spark, make_config, tmp_path):
    from dser_spark import tables

    cfg = make_config()
    assert id_list(spark, cfg, "all", [], "user_id") is None
    assert sorted(r.user_id for r in id_list(spark, cfg, "all", [3, 1], "user_id").collect()) == [1, 3]
    tables.write_table(spark, cfg, spark.createDataFrame([(5,), (6,), (5,)], "user_id long"), "vip")
    assert sorted(r.user_id for r in id_list(spark, cfg, "vip", [], "user_id").collect()) == [5, 6]
    spark.createDataFrame([(8, "x")], "item_id int, note string").write.parquet(str(tmp_path / "released"))
    assert [r.item_id for r in id_list(spark, cfg, str(tmp_path / "released"), [], "item_id").collect()] == [8]
    with pytest.raises(ValueError, match="'item_id'"):
        id_list(spark, cfg, "vip", [], "item_id")
    model_items = np.array([1, 4, 7])
    assert candidate_items(spark, make_config("recommend.item_ids=[1, 4, 99]"), model_items).tolist() == [1, 4]
    assert candidate_items(spark, cfg, model_items) is None
    with pytest.raises(ValueError, match="none of the 1 items"):
        candidate_items(spark, make_config("recommend.item_ids=[99]"), model_items)
