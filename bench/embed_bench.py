"""embed() over the demo's support messages: fedsql (Burn, CPU) against
onnxruntime running the same all-MiniLM-L6-v2 weights, same threads, same
batches of 32 sorted by length, same tokenizer (tokenizer.json), mean
pooling and L2 normalisation. PyTorch (sentence-transformers) does not
install here without its CUDA wheels, and exporting the model to ONNX needs
PyTorch too, so this script writes the ONNX graph itself from the
safetensors file (BERT's forward pass in standard ONNX ops); the two
outputs are compared before anything is timed.

    python bench/embed_bench.py MODEL_DIR PG_PORT N THREADS
"""

import json
import math
import os
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
import psycopg
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file
from tokenizers import Tokenizer


def bert_graph(model_dir):
    w = load_file(os.path.join(model_dir, "model.safetensors"))
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    hidden, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    d = hidden // heads
    eps = cfg["layer_norm_eps"]
    nodes, inits = [], []

    def init(name, array):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    counter = [0]

    def node(op, inputs, **attrs):
        counter[0] += 1
        out = f"t{counter[0]}"
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def dense(x, prefix):
        y = node("MatMul", [x, init(prefix + ".wT", w[prefix + ".weight"].T)])
        return node("Add", [y, init(prefix + ".b", w[prefix + ".bias"])])

    def norm(x, prefix):
        return node("LayerNormalization",
                    [x, init(prefix + ".g", w[prefix + ".weight"]), init(prefix + ".beta", w[prefix + ".bias"])],
                    axis=-1, epsilon=eps)

    x = node("Add", [node("Gather", [init("word", w["embeddings.word_embeddings.weight"]), "input_ids"]),
                     node("Gather", [init("pos", w["embeddings.position_embeddings.weight"]), "position_ids"])])
    x = node("Add", [x, init("type0", w["embeddings.token_type_embeddings.weight"][0])])
    x = norm(x, "embeddings.LayerNorm")
    split = init("split_shape", np.array([0, 0, heads, d], dtype=np.int64))
    merge = init("merge_shape", np.array([0, 0, hidden], dtype=np.int64))
    scale = init("scale", np.array(1.0 / math.sqrt(d), dtype=np.float32))
    half = init("half", np.array(0.5, dtype=np.float32))
    one = init("one", np.array(1.0, dtype=np.float32))
    sqrt2 = init("sqrt2", np.array(math.sqrt(2.0), dtype=np.float32))
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q = node("Transpose", [node("Reshape", [dense(x, p + "attention.self.query"), split])], perm=[0, 2, 1, 3])
        k = node("Transpose", [node("Reshape", [dense(x, p + "attention.self.key"), split])], perm=[0, 2, 3, 1])
        v = node("Transpose", [node("Reshape", [dense(x, p + "attention.self.value"), split])], perm=[0, 2, 1, 3])
        scores = node("Add", [node("Mul", [node("MatMul", [q, k]), scale]), "mask_bias"])
        context = node("MatMul", [node("Softmax", [scores], axis=-1), v])
        context = node("Reshape", [node("Transpose", [context], perm=[0, 2, 1, 3]), merge])
        h = norm(node("Add", [x, dense(context, p + "attention.output.dense")]), p + "attention.output.LayerNorm")
        inner = dense(h, p + "intermediate.dense")
        gelu = node("Mul", [node("Mul", [inner, half]), node("Add", [one, node("Erf", [node("Div", [inner, sqrt2])])])])
        x = norm(node("Add", [h, dense(gelu, p + "output.dense")]), p + "output.LayerNorm")
    nodes.append(helper.make_node("Identity", [x], ["hidden"]))
    graph = helper.make_graph(
        nodes, "minilm",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "l"]),
         helper.make_tensor_value_info("position_ids", TensorProto.INT64, [1, "l"]),
         helper.make_tensor_value_info("mask_bias", TensorProto.FLOAT, ["b", 1, 1, "l"])],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["b", "l", hidden])],
        inits)
    # IR 9 (ONNX 1.14) is what every current onnxruntime reads.
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


class OnnxEncoder:
    def __init__(self, model_dir, threads):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(bert_graph(model_dir).SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])
        self.tokenizer = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(
            max_length=json.load(open(os.path.join(model_dir, "sentence_bert_config.json")))["max_seq_length"])

    def encode(self, texts, batch=32):
        ids = [e.ids for e in self.tokenizer.encode_batch(texts)]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = np.zeros((len(texts), 384), dtype=np.float32)
        for start in range(0, len(order), batch):
            chunk = order[start:start + batch]
            length = max(len(ids[i]) for i in chunk)
            input_ids = np.zeros((len(chunk), length), dtype=np.int64)
            mask = np.zeros((len(chunk), length), dtype=np.float32)
            for row, i in enumerate(chunk):
                input_ids[row, :len(ids[i])] = ids[i]
                mask[row, :len(ids[i])] = 1
            hidden = self.session.run(None, {
                "input_ids": input_ids,
                "position_ids": np.arange(length, dtype=np.int64)[None, :],
                "mask_bias": ((1.0 - mask) * -1e9)[:, None, None, :].astype(np.float32),
            })[0]
            pooled = (hidden * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)
            out[chunk] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        return out


def main():
    model_dir, port, n, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    conn = psycopg.connect(f"host=127.0.0.1 port={port} user=fedsql dbname=demo", autocommit=True)
    conn.execute(f"CREATE ENCODER IF NOT EXISTS minilm FROM '{model_dir}'")
    texts = [t for (t,) in conn.execute(
        f"SELECT text FROM bank.support_messages ORDER BY message_id LIMIT {n}").fetchall()]
    assert len(texts) == n, f"the demo has {len(texts)} support messages; raise --demo-scale"
    onnx_encoder = OnnxEncoder(model_dir, threads)

    # Same answer first: fedsql's vectors against onnxruntime's.
    sample = texts[:64]
    ours = np.array([v for (v,) in conn.execute(
        "SELECT embed('minilm', t) FROM (SELECT unnest(%s::bigint[]) AS i, unnest(%s::text[]) AS t) ORDER BY i",
        [list(range(len(sample))), sample]).fetchall()], dtype=np.float32)
    worst = float((ours * onnx_encoder.encode(sample)).sum(1).min())
    assert worst > 0.9999, f"fedsql and onnxruntime disagree (cosine {worst})"

    start = time.perf_counter()
    (count,) = conn.execute(
        f"SELECT count(v) FROM (SELECT embed('minilm', text) AS v FROM "
        f"(SELECT text FROM bank.support_messages ORDER BY message_id LIMIT {n}))").fetchone()
    fedsql_s = time.perf_counter() - start
    assert count == n
    start = time.perf_counter()
    onnx_encoder.encode(texts)
    onnx_s = time.perf_counter() - start
    print(f"{'embed ' + str(n) + ' support messages':34} {'seconds':>8} {'sentences/s':>12}")
    print(f"{'onnxruntime ' + ort.__version__ + f' ({threads} thr)':34} {onnx_s:8.2f} {n / onnx_s:12.0f}")
    print(f"{'fedsql embed() (Burn flex)':34} {fedsql_s:8.2f} {n / fedsql_s:12.0f}")
    print(f"ratio (fedsql sentences/s ÷ onnxruntime's): {onnx_s / fedsql_s:.2f}×  (agreement: min cosine {worst:.6f})")


main()
