"""Sentence embeddings in SQL (`embed`, `tokenize`, `cosine_similarity`)
against an independent numpy implementation of all-MiniLM-L6-v2 over the
same safetensors file (minilm_reference.py), paraphrase retrieval, semantic
search over the demo's support messages, and the encoder's errors."""

import numpy as np
import psycopg
import pytest

from conftest import start_fedsql
from minilm_reference import Reference, minilm_dir

# Paraphrase pairs: each sentence's nearest neighbour must be its pair.
PARAPHRASES = [
    ("I lost my debit card", "my bank card is gone and I cannot find it"),
    ("how do I reset my online banking password", "I forgot the password for internet banking"),
    ("what is the interest rate on a mortgage", "how much interest do you charge for a home loan"),
    ("send money to my sister abroad", "I want to wire funds to a relative in another country"),
    ("there is a payment on my statement I did not make", "a transaction on my statement was not made by me"),
    ("when does the branch open on Saturday", "what are your weekend opening hours"),
    ("please close my savings account", "I would like to shut down my savings account"),
    ("my salary has not arrived yet", "I haven't received my wages this month"),
    ("can I increase my credit card limit", "I need a higher spending limit on my card"),
    ("the ATM swallowed my card", "the cash machine kept my card"),
    ("how do I change my address", "I moved house and need to update where I live"),
    ("is there a fee for foreign transactions", "do you charge extra when I pay in another currency"),
    ("I want to open an account for my child", "how can my kid get their own bank account"),
    ("my phone was stolen with the banking app on it", "someone took my mobile that has your app installed"),
    ("how long does a bank transfer take", "how many days until a bank transfer goes through"),
    ("what documents do I need for a loan", "which papers are required to apply for credit"),
    ("cancel the standing order to my landlord", "stop the recurring payment for my rent"),
    ("the weather is lovely today", "it is a beautiful sunny day"),
    ("I would like to speak to a human", "can I talk to a real person please"),
    ("my card was declined at the supermarket", "the shop refused my card when I tried to pay"),
    ("how do I activate my new card", "I just got a new card, how do I switch it on"),
    ("what is my account balance", "how much money do I have in my account"),
    ("Ich habe meine Karte verloren", "Meine Bankkarte ist weg"),
    ("set up two-factor authentication", "turn on 2FA for my login"),
    ("how do I report a phishing email", "where can I report a scam e-mail"),
]

# Tokenization edge cases on top of the pairs: accents, punctuation,
# case, numbers, non-Latin scripts, emoji, and input far over the model's
# 256 tokens (truncated). The empty string is checked on its own: in a
# text[] parameter, fedsql's array decoding (arrow-pg) reads "" as NULL.
ODD = [
    "Héllo wörld, naïve café — déjà vu!",
    "ÀÉÎÕÜ ÇÑ ß Øre",
    "???!!!...,,,;;;",
    "IBAN DE89 3704 0044 0532 0130 00; amount: €1.234,56",
    "銀行カードをなくしました",
    "my card 💳 is gone 😢",
    "word " * 400,
]


@pytest.fixture(scope="module")
def server():
    server = start_fedsql()
    with psycopg.connect(dsn(server), autocommit=True) as conn:
        conn.execute(f"CREATE ENCODER minilm FROM '{minilm_dir()}'")
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="module")
def reference():
    return Reference(minilm_dir())


def dsn(server):
    return f"host=127.0.0.1 port={server.pg_port} user=fedsql dbname=demo"


def sentences():
    return [s for pair in PARAPHRASES for s in pair] + ODD


def test_tokenization_equals_the_tokenizers_reference(server, reference):
    with psycopg.connect(dsn(server)) as conn:
        for text in sentences():
            (ids,) = conn.execute("SELECT tokenize('minilm', %s)", [text]).fetchone()
            assert ids == reference.ids(text), text
    # Over-long input is truncated at the model's 256 tokens, ending in [SEP].
    assert len(reference.ids(ODD[-1])) == 256 and reference.ids(ODD[-1])[-1] == 102


def test_embeddings_equal_the_numpy_reference(server, reference):
    texts = sentences()
    assert len(texts) >= 50
    with psycopg.connect(dsn(server)) as conn:
        # One query over all of them: batched, padded, sorted by length.
        rows = conn.execute(
            "SELECT i, embed('minilm', t) FROM "
            "(SELECT unnest(%s::bigint[]) AS i, unnest(%s::text[]) AS t) ORDER BY i",
            [list(range(len(texts))), texts],
        ).fetchall()
    assert len(rows) == len(texts)
    for (_, got), text in zip(rows, texts):
        got = np.array(got, dtype=np.float64)
        want = reference.embed(text)
        assert got.shape == (384,)
        assert abs(np.linalg.norm(got) - 1.0) < 1e-4, text
        cosine = float(got @ want / np.linalg.norm(got) / np.linalg.norm(want))
        assert cosine >= 0.9999, (text, cosine)
    with psycopg.connect(dsn(server)) as conn:
        (empty,) = conn.execute("SELECT embed('minilm', '')").fetchone()
    assert float(np.array(empty) @ reference.embed("")) >= 0.9999


def test_each_sentence_retrieves_its_paraphrase(server):
    texts = [s for pair in PARAPHRASES for s in pair]
    with psycopg.connect(dsn(server)) as conn:
        conn.execute(
            "CREATE TABLE demo.public.paraphrases AS "
            "SELECT id, t AS text, embed('minilm', t) AS v "
            "FROM (SELECT unnest(%s::bigint[]) AS id, unnest(%s::text[]) AS t)",
            [list(range(len(texts))), texts],
        )
        rows = conn.execute(
            "SELECT id, nearest FROM ("
            "  SELECT a.id, b.id AS nearest, row_number() OVER ("
            "    PARTITION BY a.id ORDER BY cosine_similarity(a.v, b.v) DESC) AS rank"
            "  FROM demo.public.paraphrases a JOIN demo.public.paraphrases b ON a.id <> b.id"
            ") WHERE rank = 1 ORDER BY id"
        ).fetchall()
        conn.execute("DROP TABLE demo.public.paraphrases")
    assert len(rows) == len(texts)
    wrong = [(texts[i], texts[j]) for i, j in rows if j != i ^ 1]
    assert not wrong, wrong


def test_semantic_search_over_support_messages(server):
    with psycopg.connect(dsn(server)) as conn:
        rows = conn.execute(
            "SELECT message_id, text, intent FROM bank.support_messages "
            "ORDER BY cosine_similarity(embed('minilm', text), embed('minilm', 'I lost my card')) DESC "
            "LIMIT 5"
        ).fetchall()
        assert len(rows) == 5
        # None of these words is in the query, but every hit means it.
        assert {intent for _, _, intent in rows} == {"card_lost"}, rows
        # The distance is 1 − similarity, and a vector is closest to itself.
        (d, s) = conn.execute(
            "SELECT cosine_distance(embed('minilm', 'x y'), embed('minilm', 'a b')), "
            "cosine_similarity(embed('minilm', 'x y'), embed('minilm', 'x y'))"
        ).fetchone()
        assert 0 < d < 2 and abs(s - 1.0) < 1e-6
        # NULL text embeds to NULL.
        assert conn.execute("SELECT embed('minilm', NULL::text) IS NULL").fetchone() == (True,)


def test_encoder_errors_and_persistence(server, tmp_path):
    with psycopg.connect(dsn(server), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as e:
            conn.execute("SELECT embed('nope', 'x')")
        assert e.value.sqlstate == "42704" and "CREATE ENCODER nope" in str(e.value)
        with pytest.raises(psycopg.Error) as e:
            conn.execute(f"CREATE ENCODER broken FROM '{tmp_path}'")
        assert e.value.sqlstate == "58P01" and "config.json" in str(e.value)
        (tmp_path / "config.json").write_text(
            '{"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1, '
            '"num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 16}'
        )
        with pytest.raises(psycopg.Error) as e:
            conn.execute(f"CREATE ENCODER broken FROM '{tmp_path}'")
        assert e.value.sqlstate == "58P01" and "tokenizer.json: missing" in str(e.value)
        with pytest.raises(psycopg.Error) as e:
            conn.execute(f"CREATE ENCODER minilm FROM '{minilm_dir()}'")
        assert e.value.sqlstate == "42710"
        conn.execute(f"CREATE ENCODER IF NOT EXISTS minilm FROM '{minilm_dir()}'")
        with pytest.raises(psycopg.Error) as e:
            conn.execute("SELECT cosine_similarity(embed('minilm', 'a'), 'b')")
        assert "takes two vectors" in str(e.value)
        rows = conn.execute("SELECT name, dims, max_tokens, pooling FROM fedsql.system.encoders").fetchall()
        assert rows == [("minilm", 384, 256, "mean, normalized")]


def test_a_created_encoder_survives_a_restart():
    server = start_fedsql()
    try:
        with psycopg.connect(dsn(server), autocommit=True) as conn:
            conn.execute(f"CREATE ENCODER mini FROM '{minilm_dir()}'")
            before = conn.execute("SELECT embed('mini', 'card')").fetchone()[0]
        assert server.stop() == 0
        server = start_fedsql(data_dir=server.data_dir)
        with psycopg.connect(dsn(server), autocommit=True) as conn:
            assert conn.execute("SELECT embed('mini', 'card')").fetchone()[0] == before
            conn.execute("DROP ENCODER mini")
            with pytest.raises(psycopg.Error) as e:
                conn.execute("SELECT embed('mini', 'card')")
            assert e.value.sqlstate == "42704"
    finally:
        server.stop()
