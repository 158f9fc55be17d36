//! Hugging Face weight names of a decoder, as GGUF files name them.

/// The GGUF tensor name for a Hugging Face name relative to the model root.
pub(crate) fn gguf_name(hf: &str) -> Option<String> {
    let (stem, kind) = hf.rsplit_once('.')?;
    let mapped = match stem {
        "embed_tokens" => "token_embd".to_string(),
        "norm" => "output_norm".to_string(),
        "lm_head" => "output".to_string(),
        _ => {
            let rest = stem.strip_prefix("layers.")?;
            let (index, inner) = rest.split_once('.')?;
            let short = match inner {
                "input_layernorm" => "attn_norm",
                "post_attention_layernorm" => "ffn_norm",
                "self_attn.q_proj" => "attn_q",
                "self_attn.k_proj" => "attn_k",
                "self_attn.v_proj" => "attn_v",
                "self_attn.o_proj" => "attn_output",
                "self_attn.q_norm" => "attn_q_norm",
                "self_attn.k_norm" => "attn_k_norm",
                "mlp.gate_proj" => "ffn_gate",
                "mlp.up_proj" => "ffn_up",
                "mlp.down_proj" => "ffn_down",
                _ => return None,
            };
            format!("blk.{index}.{short}")
        }
    };
    Some(format!("{mapped}.{kind}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_names() {
        assert_eq!(gguf_name("embed_tokens.weight").as_deref(), Some("token_embd.weight"));
        assert_eq!(
            gguf_name("layers.12.self_attn.k_norm.weight").as_deref(),
            Some("blk.12.attn_k_norm.weight")
        );
        assert_eq!(
            gguf_name("layers.0.mlp.down_proj.weight").as_deref(),
            Some("blk.0.ffn_down.weight")
        );
        assert_eq!(
            gguf_name("layers.0.self_attn.q_proj.bias").as_deref(),
            Some("blk.0.attn_q.bias")
        );
        assert_eq!(gguf_name("lm_head.weight").as_deref(), Some("output.weight"));
        assert_eq!(gguf_name("layers.0.unknown.weight"), None);
    }
}
