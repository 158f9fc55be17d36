//! Prompts: named texts a model puts before an input (`query` -> `query: `, from
//! `config_sentence_transformers.json`), and the one used when a caller names none.
//! The command line and the server resolve a requested name here, so both accept and
//! refuse the same names with the same words.

use std::collections::HashMap;

/// A prompt name the model does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("has no prompt named {name:?} (it has: {known})")]
pub struct UnknownPrompt {
    pub name: String,
    /// The names it has, sorted and joined, or `none`.
    pub known: String,
}

/// The text to put before each input when a caller asks for prompt `name`, or for none
/// (then the model's `default`, if any).
pub fn resolve_prompt<'a>(
    prompts: &'a HashMap<String, String>,
    default: Option<&'a str>,
    name: Option<&str>,
) -> Result<Option<&'a str>, UnknownPrompt> {
    let Some(name) = name else { return Ok(default) };
    match prompts.get(name) {
        Some(text) => Ok(Some(text)),
        None => {
            let mut known: Vec<&str> = prompts.keys().map(String::as_str).collect();
            known.sort_unstable();
            let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
            Err(UnknownPrompt { name: name.to_string(), known })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_prompt_the_default_or_a_refusal_naming_what_exists() {
        let prompts = HashMap::from([
            ("query".to_string(), "query: ".to_string()),
            ("passage".to_string(), "passage: ".to_string()),
        ]);
        assert_eq!(resolve_prompt(&prompts, Some("passage: "), Some("query")), Ok(Some("query: ")));
        assert_eq!(resolve_prompt(&prompts, Some("passage: "), None), Ok(Some("passage: ")));
        let err = resolve_prompt(&prompts, None, Some("doc")).unwrap_err();
        assert_eq!(err.to_string(), "has no prompt named \"doc\" (it has: passage, query)");
        let err = resolve_prompt(&HashMap::new(), None, Some("doc")).unwrap_err();
        assert_eq!(err.known, "none");
    }
}
