//! Saving a trained model as a sentence-transformers directory that sembase
//! serves and Python sentence-transformers loads, with a model card.

use std::collections::HashMap;
use std::path::Path;

use sembase_core::adapter_dir::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use sembase_core::models::decoder_merge::merged_decoder;
use sembase_core::pooling::PoolingMode;

use crate::error::{Result, TrainError};
use crate::trainable::TrainableModel;
use crate::trainer::TrainState;
use sembase_embed::durable::{self, write_json};

/// The name under which a training prefix the base has no prompt for is saved.
const DEFAULT_PROMPT: &str = "default";

/// What the model card says about a run.
#[derive(Debug, Clone, Default)]
pub struct ModelCard {
    /// The base model (store name or directory).
    pub base: String,
    /// `simcse`, `pairs`, `triplets` or `sts`.
    pub objective: String,
    /// The training data file.
    pub data: String,
    /// The hyper-parameters, as given.
    pub hyperparameters: serde_json::Value,
    /// Prefix used for queries / both sides during evaluation.
    pub prefix: Option<String>,
    /// Prefix used for documents during evaluation.
    pub doc_prefix: Option<String>,
    /// Matryoshka widths the model was trained for.
    pub dims: Vec<usize>,
    /// The instruction put before queries (anchors) only, saved as the `query` prompt.
    pub query_prompt: Option<String>,
    /// The prefix every training text got, saved as the default prompt so that a model
    /// used without naming a prompt embeds as it was trained.
    pub default_prompt: Option<String>,
    /// Filled from the run: final loss, evaluations, best step.
    pub run: serde_json::Value,
}

impl ModelCard {
    /// A copy that records the run so far.
    pub fn with_state(&self, state: &TrainState) -> ModelCard {
        let mut card = self.clone();
        card.run = serde_json::json!({
            "steps": state.step,
            "final_loss": state.loss.last().map(|(_, l)| *l),
            "eval": state.eval,
            "best": state.best,
        });
        card
    }

    /// The README: the run's settings and results, then how to load the model (`usage`).
    pub(crate) fn markdown(&self, usage: &str) -> String {
        let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
        let dims = if self.dims.is_empty() {
            String::new()
        } else {
            format!("- Matryoshka widths: {:?}\n", self.dims)
        };
        format!(
            "# Fine-tuned with sembase\n\n- Base model: `{}`\n- Objective: `{}`\n- Training data: `{}`\n{}\n\
             ## Hyper-parameters\n```json\n{}\n```\n\n## Run\n```json\n{}\n```\n\n{usage}\n",
            self.base,
            self.objective,
            self.data,
            dims,
            pretty(&self.hyperparameters),
            pretty(&self.run)
        )
    }
}

/// The tokenizer's files a model directory may hold, other than `tokenizer_config.json`.
const TOKENIZER_FILES: [&str; 6] = [
    "tokenizer.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
];

/// Copies the tokenizer's files (those present, `tokenizer_config.json` aside) from `from` to `to`.
pub(crate) fn copy_tokenizer_files(from: &Path, to: &Path) -> Result<()> {
    TOKENIZER_FILES.iter().try_for_each(|name| copy_if_present(from, to, name))
}

/// Copies `name` from `from` to `to` when it exists.
fn copy_if_present(from: &Path, to: &Path, name: &str) -> Result<()> {
    let source = from.join(name);
    if source.exists() {
        std::fs::copy(&source, to.join(name)).map_err(|e| TrainError::io(&source, e))?;
    }
    Ok(())
}

/// Writes the model to `out` atomically (a previous export there is replaced).
pub fn export_model(model: &TrainableModel, out: &Path, card: &ModelCard) -> Result<()> {
    let source = &model.source.path;
    durable::replace_dir(out, |dir| {
        copy_tokenizer_files(source, dir)?;
        copy_if_present(source, dir, "tokenizer_config.json")?;
        match model.decoder() {
            // An adapter directory has no config.json, as PEFT saves them: with one,
            // transformers would take the directory for a whole model and not load the
            // base. Its attention mask goes to sentence_bert_config.json below.
            Some((config, training)) if training.merge => {
                write_decoder_config(model, dir, config)?;
                write_merged(model, dir, config, &training.lora)?;
            }
            Some((_, training)) => write_adapter(model, dir, &training.lora)?,
            None => {
                copy_if_present(source, dir, "config.json")?;
                model.encoder_vars().save(dir.join("model.safetensors"))?;
            }
        }
        let mut modules = vec![
            module(0, "", "sentence_transformers.models.Transformer"),
            module(1, "1_Pooling", "sentence_transformers.models.Pooling"),
        ];
        std::fs::create_dir(dir.join("1_Pooling"))
            .map_err(|e| TrainError::io(dir.join("1_Pooling"), e))?;
        write_json(&dir.join("1_Pooling/config.json"), &pooling_config(model))?;
        for (i, dense) in model.dense_modules().iter().enumerate() {
            let path = format!("{}_Dense", i + 2);
            std::fs::create_dir(dir.join(&path)).map_err(|e| TrainError::io(dir.join(&path), e))?;
            write_json(&dir.join(&path).join("config.json"), &dense.config)?;
            dense.vars.save(dir.join(&path).join("model.safetensors"))?;
            modules.push(module(i + 2, &path, "sentence_transformers.models.Dense"));
        }
        if model.normalizes() {
            let idx = modules.len();
            modules.push(module(
                idx,
                &format!("{idx}_Normalize"),
                "sentence_transformers.models.Normalize",
            ));
        }
        write_json(&dir.join("modules.json"), &modules)?;
        let max_seq_length = model.source.max_seq_length.unwrap_or(model.max_tokens());
        let mut sbert =
            serde_json::json!({"max_seq_length": max_seq_length, "do_lower_case": false});
        if model.decoder().is_some_and(|(config, _)| !config.is_causal) {
            // sentence-transformers hands these to AutoConfig (transformers >= 5.2 reads
            // is_causal), and sembase sets them over config.json when it loads the model.
            sbert["config_kwargs"] = serde_json::json!({"is_causal": false});
        }
        write_json(&dir.join("sentence_bert_config.json"), &sbert)?;
        let mut prompts = model.source.prompts.clone();
        if let Some(query) = &card.query_prompt {
            prompts.insert("query".into(), query.clone());
        }
        let default_prompt_name = match &card.default_prompt {
            Some(prefix) => Some(prompt_named(&mut prompts, prefix)),
            None => model.source.default_prompt_name.clone(),
        };
        write_json(
            &dir.join("config_sentence_transformers.json"),
            &serde_json::json!({
                "prompts": prompts,
                "default_prompt_name": default_prompt_name,
                "similarity_fn_name": "cosine",
                "sembase": {"matryoshka_dims": card.dims},
            }),
        )?;
        let usage = "Load it with `sembase serve --model DIR` or `SentenceTransformer(DIR)`.";
        Ok(durable::write_bytes(&dir.join("README.md"), card.markdown(usage).as_bytes())?)
    })
}

/// The name of the prompt `text` in `prompts` (the base's own name for it where it has
/// one, as `query` for e5's `query: `), added as `default` where it has none.
fn prompt_named(prompts: &mut HashMap<String, String>, text: &str) -> String {
    let mut names: Vec<&String> =
        prompts.iter().filter(|(_, p)| *p == text).map(|(n, _)| n).collect();
    names.sort();
    match names.first() {
        Some(name) => name.to_string(),
        None => {
            prompts.insert(DEFAULT_PROMPT.into(), text.into());
            DEFAULT_PROMPT.into()
        }
    }
}

/// The base's `config.json`, with `is_causal: false` when the model was made
/// bidirectional.
fn write_decoder_config(
    model: &TrainableModel,
    dir: &Path,
    config: &sembase_core::models::DecoderConfig,
) -> Result<()> {
    let config_path = model.source.path.join("config.json");
    let text = std::fs::read(&config_path).map_err(|e| TrainError::io(&config_path, e))?;
    let mut base_config: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| TrainError::Data(format!("{}: {e}", config_path.display())))?;
    if !config.is_causal {
        base_config["is_causal"] = false.into();
    }
    Ok(write_json(&dir.join("config.json"), &base_config)?)
}

/// The base with the adapters folded in, as one `model.safetensors` in f32.
fn write_merged(
    model: &TrainableModel,
    dir: &Path,
    config: &sembase_core::models::DecoderConfig,
    lora: &sembase_core::layers::LoraSpec,
) -> Result<()> {
    let adapters: HashMap<String, candle_core::Tensor> = model
        .encoder_vars()
        .data()
        .lock()
        .expect("var map lock")
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
        .collect();
    let merged = merged_decoder(config, &model.source.weight_files, &adapters, lora)?;
    Ok(candle_core::safetensors::save(&merged, dir.join("model.safetensors"))?)
}

/// A decoder's LoRA adapters in PEFT's layout: `adapter_config.json` naming the base's
/// directory, and `adapter_model.safetensors`.
fn write_adapter(
    model: &TrainableModel,
    dir: &Path,
    lora: &sembase_core::layers::LoraSpec,
) -> Result<()> {
    let base = std::fs::canonicalize(&model.source.path)
        .map_err(|e| TrainError::io(&model.source.path, e))?;
    write_json(
        &dir.join(ADAPTER_CONFIG),
        &serde_json::json!({
            "peft_type": "LORA",
            "task_type": "FEATURE_EXTRACTION",
            "base_model_name_or_path": base,
            "r": lora.rank,
            "lora_alpha": lora.alpha,
            "lora_dropout": lora.dropout,
            "target_modules": lora.targets,
            "use_rslora": lora.rank_stabilized,
            "bias": "none",
            "fan_in_fan_out": false,
            "use_dora": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "modules_to_save": null,
            "layers_to_transform": null,
        }),
    )?;
    Ok(model.encoder_vars().save(dir.join(ADAPTER_WEIGHTS))?)
}

/// One entry of `modules.json`.
pub(crate) fn module(idx: usize, path: &str, kind: &str) -> serde_json::Value {
    serde_json::json!({"idx": idx, "name": idx.to_string(), "path": path, "type": kind})
}

fn pooling_config(model: &TrainableModel) -> serde_json::Value {
    let modes = model.pooling().modes();
    let on = |m: PoolingMode| modes.contains(&m);
    serde_json::json!({
        "word_embedding_dimension": model.hidden_size(),
        "pooling_mode_cls_token": on(PoolingMode::Cls),
        "pooling_mode_mean_tokens": on(PoolingMode::Mean),
        "pooling_mode_max_tokens": on(PoolingMode::Max),
        "pooling_mode_mean_sqrt_len_tokens": on(PoolingMode::MeanSqrtLen),
        "pooling_mode_weightedmean_tokens": false,
        "pooling_mode_lasttoken": on(PoolingMode::LastToken),
        "include_prompt": true
    })
}
