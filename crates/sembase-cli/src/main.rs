//! `sembase`: the command line. Each subcommand is a thin layer over a library crate.

mod embed;
mod embed_input;
mod embed_output;
mod eval;
mod head;
mod heap;
mod index;
mod index_model;
mod index_queue;
mod mine;
mod model;
mod models;
mod rerank;
mod search;
mod search_rerank;
mod serve;
mod train;

use clap::{Parser, Subcommand};

/// Self-hosted text embeddings and semantic matching.
#[derive(Parser)]
#[command(name = "sembase", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch and list models in the local store.
    #[command(subcommand)]
    Model(model::ModelCommand),
    /// Embed texts from a file or stdin into JSONL or .npy.
    Embed(embed::EmbedArgs),
    /// Classifiers on frozen embeddings: train, eval, predict.
    #[command(subcommand)]
    Head(head::HeadCommand),
    /// Corpus indexes: build, add, delete; work and status for queued builds.
    #[command(subcommand)]
    Index(index::IndexCommand),
    /// Search an index with query texts.
    Search(search::SearchArgs),
    /// Order candidates by a cross-encoder's relevance to a query.
    Rerank(rerank::RerankArgs),
    /// Evaluate models side by side on sts, pairs and retrieval tasks.
    Eval(eval::EvalArgs),
    /// Serve models over an OpenAI-compatible HTTP API.
    Serve(serve::ServeArgs),
    /// Fine-tune a model: simcse, pairs, triplets or sts (CoSENT).
    Train(Box<train::TrainArgs>),
    /// Mine hard negatives for labelled pairs into a triplets TSV for `train triplets`.
    Mine(mine::MineArgs),
}

fn main() {
    heap::reuse_freed_buffers();
    let cli = Cli::parse();
    // A kernel set this CPU lacks is refused here, before any command runs.
    let result = sembase_core::kernels::cpu_features::KernelSet::from_env()
        .map_err(anyhow::Error::from)
        .and_then(|_| run(cli.command));
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Runs one subcommand.
fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Model(cmd) => model::run(cmd),
        Command::Embed(args) => embed::run(args),
        Command::Head(cmd) => head::run(cmd),
        Command::Index(cmd) => index::run(cmd),
        Command::Search(args) => search::run(args),
        Command::Rerank(args) => rerank::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Train(args) => train::run(*args),
        Command::Mine(args) => mine::run(args),
    }
}
