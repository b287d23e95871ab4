"""Sentence embeddings in SQL (`embed`, `tokenize`, `cosine_similarity`)
against an independent numpy implementation of all-MiniLM-L6-v2 over the
same safetensors file (minilm_reference.py), paraphrase retrieval, semantic
search over the demo's support messages, and the encoder's errors."""

import json

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


# New wording, same intents: none of these sentences (and few of their
# words) is in the demo's support messages.
REWORDED = [
    ("how many dollars are sitting in my savings", "balance"),
    ("tell me what I have got left to spend", "balance"),
    ("am I overdrawn at the moment", "balance"),
    ("what amount is there in my account today", "balance"),
    ("how rich am I right now", "balance"),
    ("my plastic has vanished and I cannot locate it", "card_lost"),
    ("a pickpocket grabbed my purse on the tram", "card_lost"),
    ("I dropped my visa somewhere in town", "card_lost"),
    ("I have no idea where I put my mastercard", "card_lost"),
    ("my purse got snatched with everything in it", "card_lost"),
    ("a purchase I never made showed up", "fraud_report"),
    ("there are charges from a shop I have never been to", "fraud_report"),
    ("somebody is spending my money without asking me", "fraud_report"),
    ("I think my details were hacked and used to buy things", "fraud_report"),
    ("I do not recognise this debit from last night", "fraud_report"),
    ("I need financing to buy a house", "loan"),
    ("can you lend me ten thousand", "loan"),
    ("what would the monthly repayment be on a mortgage", "loan"),
    ("I am interested in credit to buy a vehicle", "loan"),
    ("could the bank advance me funds for my studies", "loan"),
    ("please wire 200 to my landlord", "transfer"),
    ("move some cash across to my brother", "transfer"),
    ("I need to pay my friend back 50 euros", "transfer"),
    ("put 300 into savings from my checking", "transfer"),
    ("send a payment abroad to my mother", "transfer"),
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


def test_text_classifier_federated_by_region_understands_new_wording(server):
    options = "WITH (rounds = 10, optimizer = 'adam', learning_rate = 0.05, local_epochs = 5)"
    source = "FROM (SELECT text, intent, region FROM bank.support_messages) FEDERATED BY region"
    with psycopg.connect(dsn(server), autocommit=True) as conn:
        notices = []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary))
        conn.execute(
            f"TRAIN MODEL intent USING text_classifier (encoder = 'minilm', tune = 'head') "
            f"PREDICT intent {source} {options}"
        )
        # Each client's encoding is reported before its rounds.
        encoded = [n for n in notices if "rows with encoder minilm" in n]
        assert len(encoded) == 3, notices
        conn.execute(f"TRAIN MODEL intent_words USING logistic_regression PREDICT intent {source} {options}")
        metrics = {
            model: json.loads(m)["accuracy"]
            for model, m in conn.execute(
                "SELECT model, metrics FROM fedsql.system.models "
                "WHERE model IN ('intent', 'intent_words') AND active"
            ).fetchall()
        }
        # Held out during training: at least the bag of words' accuracy.
        assert metrics["intent"] >= metrics["intent_words"] - 1e-9, metrics

        def accuracy(model):
            rows = conn.execute(
                f"SELECT predict('{model}', t), i FROM "
                "(SELECT unnest(%s::text[]) AS t, unnest(%s::text[]) AS i)",
                [[t for t, _ in REWORDED], [i for _, i in REWORDED]],
            ).fetchall()
            return sum(p == i for p, i in rows) / len(rows)

        encoder, words = accuracy("intent"), accuracy("intent_words")
        # Measured 0.96 against 0.40: the stated margin is 0.3.
        assert encoder >= 0.85 and encoder >= words + 0.3, (encoder, words)

        # Only the head travels: 384 × 5 weights + 5 biases, never the
        # 22M-parameter encoder.
        (parameters,) = conn.execute(
            "SELECT parameters FROM fedsql.system.models WHERE model = 'intent' AND active"
        ).fetchone()
        assert parameters == 384 * 5 + 5
        sent = conn.execute(
            "SELECT bytes_sent FROM fedsql.system.training_rounds "
            "WHERE model = 'intent' AND phase = 'train' AND status = 'ok'"
        ).fetchall()
        assert len(sent) == 30
        assert all(parameters * 4 <= b <= parameters * 4 + 1024 for (b,) in sent), sent
        described = [row[3] for row in conn.execute("DESCRIBE MODEL intent").fetchall()]
        assert any("sentence encoder minilm" in d for d in described), described

        # Materialized embeddings are features too: one per element.
        conn.execute(
            "CREATE TABLE demo.public.embedded AS SELECT embed('minilm', text) AS v, intent, region "
            "FROM bank.support_messages"
        )
        conn.execute(
            "TRAIN MODEL intent_vectors USING logistic_regression PREDICT intent "
            f"FROM (SELECT v, intent, region FROM demo.public.embedded) FEDERATED BY region {options}"
        )
        (predicted,) = conn.execute(
            "SELECT predict('intent_vectors', embed('minilm', 'a pickpocket grabbed my purse on the tram'))"
        ).fetchone()
        assert predicted == "card_lost"
        described = [row[3] for row in conn.execute("DESCRIBE MODEL intent_vectors").fetchall()]
        assert "vector (384 numbers)" in described, described
        conn.execute("DROP TABLE demo.public.embedded")

        with pytest.raises(psycopg.Error) as e:
            conn.execute(f"TRAIN MODEL x USING text_classifier (encoder = 'minilm', tune = 'lora') PREDICT intent {source}")
        assert e.value.sqlstate == "0A000" and "only tune = 'head'" in str(e.value)
        with pytest.raises(psycopg.Error) as e:
            conn.execute(f"TRAIN MODEL x USING text_classifier PREDICT intent {source}")
        assert e.value.sqlstate == "22023" and "needs an encoder" in str(e.value)
