"""Doc2Vec (gensim) embeddings of user sequences and item content, on the driver or in executors.

User documents are each user's fit-scope item sequence in time order (items
as tokens, tag = user). PV-DBOW trains item token vectors only with
``dbow_words=1``, which is always set. Deterministic with ``embed.workers: 1``
(the default) and the seed; more workers are faster but not reproducible.
With ``embed.on_executor`` each fit runs in one executor's Python worker (one
group of a grouped pandas UDF) and gives the same vectors as on the driver.
"""
from __future__ import annotations

import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
from gensim.models.doc2vec import Doc2Vec, TaggedDocument
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from dser_spark.config import EmbedConfig
from dser_spark.sequences import scope_sequences

log = logging.getLogger("dser_spark")


@dataclass
class SequenceEmbedding:
    """Vectors learned from user sequences, aligned with the given id arrays."""

    user_ids: np.ndarray        # (U,)
    user_vectors: np.ndarray    # (U, d) long-term taste: the paragraph vector
    item_ids: np.ndarray        # (I,)
    item_vectors: np.ndarray    # (I, d) trained item token vectors (zeros if unseen)
    item_out_vectors: np.ndarray  # (I, d) output vectors (syn1neg; zeros if unseen)


def train_sequence_model(user_ids: np.ndarray, sequences: list[np.ndarray], cfg: EmbedConfig,
                         seed: int) -> Doc2Vec:
    """Fit Doc2Vec on the users' time-ordered item sequences."""
    words = {int(i): str(i) for i in np.unique(np.concatenate(sequences))} if len(sequences) else {}
    # every document points at its items' one shared str: no str object per token
    docs = [TaggedDocument([words[i] for i in np.asarray(seq).tolist()], [str(u)])
            for u, seq in zip(user_ids, sequences)]
    log.info("embed: Doc2Vec over %d user sequences", len(docs))
    return Doc2Vec(docs, vector_size=cfg.vector_size, window=cfg.window, min_count=cfg.min_count,
                   negative=cfg.negative, hs=0, dm=cfg.dm, dbow_words=1, epochs=cfg.epochs,
                   workers=cfg.workers, seed=seed, sample=0)


def embed_sequences(user_ids: np.ndarray, sequences: list[np.ndarray], item_ids: np.ndarray,
                    cfg: EmbedConfig, seed: int) -> SequenceEmbedding:
    """All sequence-derived vectors for the given users and item universe."""
    model = train_sequence_model(user_ids, sequences, cfg, seed)
    d = model.vector_size
    item_vec = np.zeros((len(item_ids), d), dtype=np.float32)
    item_out = np.zeros((len(item_ids), d), dtype=np.float32)
    for row, item in enumerate(item_ids):
        idx = model.wv.key_to_index.get(str(item))
        if idx is not None:
            item_vec[row] = model.wv.vectors[idx]
            item_out[row] = model.syn1neg[idx]
    user_vec = np.stack([model.dv[str(u)] for u in user_ids]).astype(np.float32) if len(user_ids) \
        else np.zeros((0, d), np.float32)
    return SequenceEmbedding(user_ids=np.asarray(user_ids), user_vectors=user_vec,
                             item_ids=np.asarray(item_ids), item_vectors=item_vec,
                             item_out_vectors=item_out)


_WORD = re.compile(r"[a-z0-9]+")


def content_tokens(item: pd.Series) -> list[str]:
    """Tokens of one item's content document: title words and prefixed metadata."""
    tokens = _WORD.findall(str(item.get("title") or "").lower())
    for field, prefix in (("genres", "g:"), ("keywords", "k:"), ("cast", "c:"), ("directors", "d:")):
        values = item.get(field)
        if values is not None:
            tokens += [prefix + str(v).lower().replace(" ", "_") for v in values]
    tokens += _WORD.findall(str(item.get("overview") or "").lower())
    return tokens or ["<empty>"]


def embed_content(items: pd.DataFrame, cfg: EmbedConfig, seed: int) -> np.ndarray:
    """Doc2Vec vectors of item content documents, aligned with ``items`` rows."""
    docs = [TaggedDocument(content_tokens(row), [str(row["item_id"])]) for _, row in items.iterrows()]
    log.info("embed: Doc2Vec over %d item content documents", len(docs))
    model = Doc2Vec(docs, vector_size=cfg.content_vector_size, window=cfg.window, min_count=1,
                    negative=cfg.negative, hs=0, dm=0, dbow_words=1, epochs=cfg.content_epochs,
                    workers=cfg.workers, seed=seed, sample=0)
    return np.stack([model.dv[str(i)] for i in items["item_id"]]).astype(np.float32)


def embed_all(inputs: dict[str, tuple[np.ndarray, list[np.ndarray]]], items: pd.DataFrame, item_ids: np.ndarray,
              cfg: EmbedConfig, seed: int, at_once: int | None = None
              ) -> tuple[dict[str, SequenceEmbedding], np.ndarray]:
    """Each scope's sequence vectors (``inputs``: scope -> users, sequences) and the content vectors of ``items``.

    The fits are independent, so ``at_once`` of them run side by side (default: all), each as reproducible as
    alone (seeded, ``cfg.workers`` threads). All at once, three equal fits and a small one share two cores and
    take ~1.5 times one fit, where two at a time take twice (the last one runs alone)."""
    with ThreadPoolExecutor(at_once or len(inputs) + 1, thread_name_prefix="doc2vec") as pool:
        fits = {scope: pool.submit(embed_sequences, users, seqs, item_ids, cfg, seed)
                for scope, (users, seqs) in inputs.items()}
        content = pool.submit(embed_content, items, cfg, seed)
        return {scope: fit.result() for scope, fit in fits.items()}, content.result()


SEQUENCE_ROWS = "kind string, scope string, id int, vector array<float>, out_vector array<float>"
CONTENT_ROWS = "item_id int, vector array<float>"


def sequence_rows(scope: str, emb: SequenceEmbedding) -> pd.DataFrame:
    """One scope's vectors as rows: ``kind`` "user" (paragraph vectors) or "item" (token + output vectors)."""
    users = pd.DataFrame({"kind": "user", "scope": scope, "id": emb.user_ids.astype(np.int32),
                          "vector": list(emb.user_vectors), "out_vector": None})
    items = pd.DataFrame({"kind": "item", "scope": scope, "id": emb.item_ids.astype(np.int32),
                          "vector": list(emb.item_vectors), "out_vector": list(emb.item_out_vectors)})
    return pd.concat([users, items], ignore_index=True)


def sequences_on_executors(sequences: DataFrame, scopes: list[str], item_ids: np.ndarray, cfg: EmbedConfig,
                           seed: int) -> DataFrame:
    """Every scope's sequence Doc2Vec as ``SEQUENCE_ROWS``, each scope fitted in one Python worker.

    ``sequences`` is the warehouse table; each scope gets a copy of it (a group
    of the UDF) and cuts its own sequences, exactly as the driver path does.
    """
    spark = sequences.sparkSession
    keyed = sequences.select("user_id", "item_ids", "has_validation", "has_test").crossJoin(
        spark.createDataFrame([(scope,) for scope in scopes], "scope string"))

    def fit(frame: pd.DataFrame) -> pd.DataFrame:
        scope = str(frame["scope"].iloc[0])
        return sequence_rows(scope, embed_sequences(*scope_sequences(frame, scope), item_ids, cfg, seed))

    return keyed.groupBy("scope").applyInPandas(fit, SEQUENCE_ROWS)


def content_on_executor(items: DataFrame, item_ids: np.ndarray, cfg: EmbedConfig, seed: int) -> DataFrame:
    """The item content Doc2Vec as ``CONTENT_ROWS``, fitted in one Python worker over all of ``items``."""
    def fit(frame: pd.DataFrame) -> pd.DataFrame:
        aligned = frame.drop(columns="one").set_index("item_id").reindex(item_ids).reset_index()
        return pd.DataFrame({"item_id": item_ids.astype(np.int32),
                             "vector": list(embed_content(aligned, cfg, seed))})

    return items.withColumn("one", F.lit(1)).groupBy("one").applyInPandas(fit, CONTENT_ROWS)
