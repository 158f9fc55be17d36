//! A GGUF decoder (llama.cpp's format) as a model directory: the file itself,
//! plus `config.json` and `tokenizer.json` rebuilt from its metadata, and a
//! sentence-transformers head (last-token pooling, then normalisation).
//!
//! Only the header is read here (metadata and tensor names); the weights stay
//! in the file for sembase-core to load.

use std::fs;
use std::io::BufReader;
use std::path::Path;

use sembase_embed::gguf::{self, GgufHeader};
use serde_json::{json, Map, Value};

use crate::error::{HubError, Result};
use crate::fsutil;
use sembase_embed::durable;

/// Reads the header of the GGUF file at `path`.
pub(crate) fn read_header(path: &Path) -> Result<GgufHeader> {
    let file = fs::File::open(path).map_err(|e| HubError::io("open", path, e))?;
    gguf::read_header(BufReader::new(file))
        .map_err(|e| HubError::invalid(path.display().to_string(), e))
}

/// Hugging Face `config.json` for the decoder in `h`.
pub(crate) fn config(h: &GgufHeader, what: &str) -> Result<Value> {
    let m = &h.metadata;
    let arch = m.get("general.architecture").and_then(Value::as_str).unwrap_or_default();
    let model_type = match arch {
        "llama" | "qwen2" | "qwen3" => arch,
        other => {
            return Err(HubError::invalid(
                what,
                format!("GGUF architecture {other:?} (supported: llama, qwen2, qwen3)"),
            ))
        }
    };
    let key = |k: &str| m.get(&format!("{arch}.{k}")).cloned();
    let need = |k: &str| {
        key(k).ok_or_else(|| HubError::invalid(what, format!("GGUF metadata lacks {arch}.{k}")))
    };
    let tokens =
        m.get("tokenizer.ggml.tokens").and_then(Value::as_array).map(Vec::len).unwrap_or(0);
    let heads = need("attention.head_count")?;
    let mut cfg = json!({
        "architectures": [format!("{}ForCausalLM", if arch == "llama" { "Llama" } else if arch == "qwen2" { "Qwen2" } else { "Qwen3" })],
        "model_type": model_type,
        "hidden_size": need("embedding_length")?,
        "intermediate_size": need("feed_forward_length")?,
        "num_hidden_layers": need("block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": key("attention.head_count_kv").unwrap_or(heads),
        "max_position_embeddings": need("context_length")?,
        "rms_norm_eps": need("attention.layer_norm_rms_epsilon")?,
        "rope_theta": key("rope.freq_base").unwrap_or(json!(10000.0)),
        "vocab_size": key("vocab_size").unwrap_or(json!(tokens)),
        "hidden_act": "silu",
        "tie_word_embeddings": !h.tensors.iter().any(|t| t.name == "output.weight"),
        "torch_dtype": "float32",
    });
    if let Some(head_dim) = key("attention.key_length") {
        cfg["head_dim"] = head_dim;
    }
    if let (Some(kind), Some(factor)) = (key("rope.scaling.type"), key("rope.scaling.factor")) {
        if kind != "none" {
            cfg["rope_scaling"] = json!({"type": kind, "factor": factor});
        }
    }
    for (gguf, hf) in [
        ("bos_token_id", "bos_token_id"),
        ("eos_token_id", "eos_token_id"),
        ("padding_token_id", "pad_token_id"),
    ] {
        if let Some(v) = m.get(&format!("tokenizer.ggml.{gguf}")) {
            cfg[hf] = v.clone();
        }
    }
    Ok(cfg)
}

/// The pre-tokenizer matching llama.cpp's `tokenizer.ggml.pre` for byte-level BPE.
fn pre_tokenizer(pre: &str, what: &str) -> Result<Value> {
    let byte_level = |regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": regex});
    let split = |pattern: &str| json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false});
    Ok(match pre {
        "gpt2" | "default" => byte_level(true),
        "smollm" => {
            json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]})
        }
        "qwen2" => json!({"type": "Sequence", "pretokenizers": [
            split(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
            byte_level(false)]}),
        "llama-bpe" | "llama3" => json!({"type": "Sequence", "pretokenizers": [
            split(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
            byte_level(false)]}),
        other => {
            return Err(HubError::invalid(
                what,
                format!("GGUF pre-tokenizer {other:?} (supported: gpt2, smollm, qwen2, llama-bpe)"),
            ))
        }
    })
}

/// A `tokenizer.json` (byte-level BPE) from the GGUF's vocabulary and merges.
pub(crate) fn tokenizer(h: &GgufHeader, what: &str) -> Result<Value> {
    let m = &h.metadata;
    let kind = m.get("tokenizer.ggml.model").and_then(Value::as_str).unwrap_or_default();
    if kind != "gpt2" {
        return Err(HubError::invalid(
            what,
            format!("GGUF tokenizer model {kind:?} (only byte-level BPE, \"gpt2\")"),
        ));
    }
    let strings = |k: &str| -> Result<Vec<&str>> {
        let list = m
            .get(k)
            .and_then(Value::as_array)
            .ok_or_else(|| HubError::invalid(what, format!("GGUF metadata lacks {k}")))?;
        list.iter()
            .map(|v| {
                v.as_str().ok_or_else(|| HubError::invalid(what, format!("{k} holds a non-string")))
            })
            .collect()
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?;
    let types: Vec<u64> = m
        .get("tokenizer.ggml.token_type")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let vocab: Map<String, Value> =
        tokens.iter().enumerate().map(|(i, t)| (t.to_string(), json!(i))).collect();
    // Control (3) and user-defined (4) tokens are matched whole, never split.
    let added: Vec<Value> = types
        .iter()
        .enumerate()
        .filter(|(_, &t)| t == 3 || t == 4)
        .map(|(i, &t)| json!({"id": i, "content": tokens[i], "single_word": false, "lstrip": false, "rstrip": false, "normalized": t == 4, "special": t == 3}))
        .collect();
    let pre = m.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("default");
    let flag =
        |k: &str| m.get(&format!("tokenizer.ggml.{k}")).and_then(Value::as_bool).unwrap_or(false);
    let id = |k: &str| {
        m.get(&format!("tokenizer.ggml.{k}"))
            .and_then(Value::as_u64)
            .map(|i| i as usize)
            .filter(|&i| i < tokens.len())
    };
    let mut around = Vec::new();
    if let (true, Some(bos)) = (flag("add_bos_token"), id("bos_token_id")) {
        around.push((true, bos));
    }
    if let (true, Some(eos)) = (flag("add_eos_token"), id("eos_token_id")) {
        around.push((false, eos));
    }
    let post = if around.is_empty() {
        Value::Null
    } else {
        let special = |i: usize| json!({"SpecialToken": {"id": tokens[i], "type_id": 0}});
        let seq = |s: &str| json!({"Sequence": {"id": s, "type_id": 0}});
        let wrap = |inner: Vec<Value>| -> Vec<Value> {
            let mut v: Vec<Value> =
                around.iter().filter(|(first, _)| *first).map(|(_, i)| special(*i)).collect();
            v.extend(inner);
            v.extend(around.iter().filter(|(first, _)| !*first).map(|(_, i)| special(*i)));
            v
        };
        let specials: Map<String, Value> = around
            .iter()
            .map(|(_, i)| {
                (
                    tokens[*i].to_string(),
                    json!({"id": tokens[*i], "ids": [i], "tokens": [tokens[*i]]}),
                )
            })
            .collect();
        json!({"type": "TemplateProcessing", "single": wrap(vec![seq("A")]), "pair": wrap(vec![seq("A"), seq("B")]), "special_tokens": specials})
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer(pre, what)?,
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges},
    }))
}

/// Writes config.json, tokenizer.json, modules.json and 1_Pooling (last token)
/// beside the GGUF file at `gguf`, in `dir`.
pub(crate) fn write_companions(gguf: &Path, dir: &Path) -> Result<()> {
    let what = gguf.display().to_string();
    let header = read_header(gguf)?;
    let cfg = config(&header, &what)?;
    durable::write_json(&dir.join("config.json"), &cfg)?;
    durable::write_json(&dir.join("tokenizer.json"), &tokenizer(&header, &what)?)?;
    durable::write_json(
        &dir.join("modules.json"),
        &json!([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ]),
    )?;
    fsutil::create_dir_all(&dir.join("1_Pooling"))?;
    durable::write_json(
        &dir.join("1_Pooling/config.json"),
        &json!({"word_embedding_dimension": cfg["hidden_size"], "pooling_mode_cls_token": false,
                "pooling_mode_mean_tokens": false, "pooling_mode_max_tokens": false,
                "pooling_mode_mean_sqrt_len_tokens": false, "pooling_mode_lasttoken": true}),
    )?;
    fsutil::create_dir_all(&dir.join("2_Normalize"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-written GGUF header round-trips through the reader into a config and tokenizer.
    #[test]
    fn header_to_config_and_tokenizer() {
        fn s(out: &mut Vec<u8>, text: &str) {
            out.extend((text.len() as u64).to_le_bytes());
            out.extend(text.as_bytes());
        }
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(1u64.to_le_bytes()); // tensors
        let u32s = [
            ("llama.block_count", 2u32),
            ("llama.embedding_length", 8),
            ("llama.feed_forward_length", 16),
            ("llama.attention.head_count", 2),
            ("llama.attention.head_count_kv", 1),
            ("llama.context_length", 64),
        ];
        b.extend((u32s.len() as u64 + 8).to_le_bytes());
        s(&mut b, "general.architecture");
        b.extend(8u32.to_le_bytes());
        s(&mut b, "llama");
        for (k, v) in u32s {
            s(&mut b, k);
            b.extend(4u32.to_le_bytes());
            b.extend(v.to_le_bytes());
        }
        s(&mut b, "llama.attention.layer_norm_rms_epsilon");
        b.extend(6u32.to_le_bytes());
        b.extend(1e-5f32.to_le_bytes());
        s(&mut b, "tokenizer.ggml.model");
        b.extend(8u32.to_le_bytes());
        s(&mut b, "gpt2");
        s(&mut b, "tokenizer.ggml.pre");
        b.extend(8u32.to_le_bytes());
        s(&mut b, "smollm");
        let tokens = ["<|endoftext|>", "a", "b", "ab", "Ġ", "Ġab"];
        s(&mut b, "tokenizer.ggml.tokens");
        b.extend(9u32.to_le_bytes());
        b.extend(8u32.to_le_bytes());
        b.extend((tokens.len() as u64).to_le_bytes());
        tokens.iter().for_each(|t| s(&mut b, t));
        s(&mut b, "tokenizer.ggml.token_type");
        b.extend(9u32.to_le_bytes());
        b.extend(5u32.to_le_bytes());
        b.extend((tokens.len() as u64).to_le_bytes());
        for t in [3i32, 1, 1, 1, 1, 1] {
            b.extend(t.to_le_bytes());
        }
        s(&mut b, "tokenizer.ggml.merges");
        b.extend(9u32.to_le_bytes());
        b.extend(8u32.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        s(&mut b, "a b");
        s(&mut b, "Ġ ab");
        s(&mut b, "tokenizer.ggml.add_bos_token");
        b.extend(7u32.to_le_bytes());
        b.push(0);
        // one tensor: token_embd.weight, 2 dims
        s(&mut b, "token_embd.weight");
        b.extend(2u32.to_le_bytes());
        b.extend(8u64.to_le_bytes());
        b.extend(6u64.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        fs::write(&path, &b).unwrap();
        let h = read_header(&path).unwrap();
        assert_eq!(
            h.tensors.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["token_embd.weight"]
        );
        let cfg = config(&h, "m").unwrap();
        assert_eq!(cfg["model_type"], "llama");
        assert_eq!(cfg["num_key_value_heads"], 1);
        assert_eq!(cfg["vocab_size"], 6);
        assert_eq!(cfg["tie_word_embeddings"], true);
        let tok = tokenizer(&h, "m").unwrap();
        assert_eq!(tok["model"]["vocab"]["Ġab"], 5);
        assert_eq!(tok["added_tokens"][0]["content"], "<|endoftext|>");
        assert!(tok["post_processor"].is_null());
        // A truncated file is an error, not a panic.
        fs::write(&path, &b[..b.len() / 2]).unwrap();
        assert!(read_header(&path).is_err());
    }
}
