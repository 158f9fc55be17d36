//! Saving a trained cross-encoder as sentence-transformers 6.2 saves a `CrossEncoder`
//! (a transformers `*ForSequenceClassification` checkpoint with one label, plus the
//! module files that make sentence-transformers load it as a CrossEncoder), so
//! `CrossEncoder(DIR)` in Python and `sembase rerank --model DIR` both read it.

use std::path::Path;

use sembase_embed::durable::{self, write_json};
use serde_json::{json, Value};

use crate::cross_model::TrainableCrossEncoder;
use crate::error::{Result, TrainError};
use crate::export::{copy_tokenizer_files, module, ModelCard};

/// The sentence-transformers release whose layout this export follows.
const LAYOUT_VERSION: &str = "6.2.0";

/// The transformers class of a sequence classifier over `model_type`'s encoder.
fn architecture(model_type: &str) -> Result<&'static str> {
    Ok(match model_type {
        "bert" => "BertForSequenceClassification",
        "xlm-roberta" => "XLMRobertaForSequenceClassification",
        "roberta" => "RobertaForSequenceClassification",
        "camembert" => "CamembertForSequenceClassification",
        "mpnet" => "MPNetForSequenceClassification",
        other => {
            return Err(TrainError::Config(format!(
                "no sequence-classification architecture for model_type {other:?}"
            )))
        }
    })
}

/// Reads a JSON object from `path` (an empty object when the file is absent).
fn read_object(path: &Path) -> Result<serde_json::Map<String, Value>> {
    if !path.exists() {
        return Ok(serde_json::Map::new());
    }
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(TrainError::Config(format!("{}: not a JSON object", path.display()))),
    }
}

/// The base's `config.json` as a one-label sequence classifier. transformers derives
/// `num_labels` from `id2label`; an older sentence-transformers' activation entry is
/// dropped (the activation lives in `config_sentence_transformers.json`).
fn classifier_config(model: &TrainableCrossEncoder) -> Result<Value> {
    let mut config = read_object(&model.source.path.join("config.json"))?;
    let class = architecture(&model.source.config.model_type)?;
    config.insert("architectures".into(), json!([class]));
    config.insert("id2label".into(), json!({"0": "LABEL_0"}));
    config.insert("label2id".into(), json!({"LABEL_0": 0}));
    for stale in ["num_labels", "sentence_transformers", "sbert_ce_default_activation_function"] {
        config.remove(stale);
    }
    Ok(Value::Object(config))
}

/// The base's `tokenizer_config.json` with the pair limit the model was trained at, which
/// is where sentence-transformers keeps a CrossEncoder's `max_length`.
fn tokenizer_config(model: &TrainableCrossEncoder) -> Result<Value> {
    let mut config = read_object(&model.source.path.join("tokenizer_config.json"))?;
    config.insert("model_max_length".into(), json!(model.max_length()));
    Ok(Value::Object(config))
}

/// Writes the cross-encoder to `out` atomically (a previous export there is replaced).
pub fn export_cross_encoder(
    model: &TrainableCrossEncoder,
    out: &Path,
    card: &ModelCard,
) -> Result<()> {
    let config = classifier_config(model)?;
    let tokenizer = tokenizer_config(model)?;
    durable::replace_dir(out, |dir| {
        copy_tokenizer_files(&model.source.path, dir)?;
        write_json(&dir.join("tokenizer_config.json"), &tokenizer)?;
        write_json(&dir.join("config.json"), &config)?;
        model.vars().save(dir.join("model.safetensors"))?;
        write_json(
            &dir.join("modules.json"),
            &[module(0, "", "sentence_transformers.base.modules.transformer.Transformer")],
        )?;
        write_json(
            &dir.join("sentence_bert_config.json"),
            &json!({
                "transformer_task": "sequence-classification",
                "modality_config": {"text": {"method": "forward", "method_output_name": "logits"}},
                "module_output_name": "scores",
            }),
        )?;
        write_json(
            &dir.join("config_sentence_transformers.json"),
            &json!({
                "__version__": {"sentence_transformers": LAYOUT_VERSION},
                "model_type": "CrossEncoder",
                "activation_fn": "torch.nn.modules.activation.Sigmoid",
                "prompts": {},
                "default_prompt_name": null,
            }),
        )?;
        let front = "---\nlibrary_name: sentence-transformers\npipeline_tag: text-ranking\ntags:\n- sentence-transformers\n- cross-encoder\n- reranker\n---\n\n";
        let usage = "Rerank with `sembase rerank --model DIR` or `CrossEncoder(DIR)` (sentence-transformers); scores are the sigmoid of the logit.";
        let readme = format!("{front}{}", card.markdown(usage));
        Ok(durable::write_bytes(&dir.join("README.md"), readme.as_bytes())?)
    })
}
