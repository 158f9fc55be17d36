//! Pulls models into the store from the environment's settings and reports
//! time and size: `cargo run -p sembase-hub --example pull -- NAME...`.

use std::io::Write;
use std::time::Instant;

use sembase_hub::{ProgressEvent, PullOptions, Store};

fn main() {
    let store = match Store::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let mut options = PullOptions::from_env();
    options.progress = Some(Box::new(|e: ProgressEvent| {
        if e.total == Some(e.done) {
            eprintln!("  {} {} bytes", e.file, e.done);
        }
    }));
    let mut failed = false;
    for spec in std::env::args().skip(1) {
        let start = Instant::now();
        match store.pull(&spec, &options) {
            Ok(path) => {
                let bytes: u64 = store
                    .list()
                    .unwrap_or_default()
                    .iter()
                    .filter(|m| m.path == path)
                    .map(|m| m.bytes)
                    .sum();
                println!(
                    "{spec}: {} ({bytes} bytes) in {:.1}s",
                    path.display(),
                    start.elapsed().as_secs_f64()
                );
            }
            Err(e) => {
                eprintln!("{spec}: error: {e}");
                failed = true;
            }
        }
        let _ = std::io::stdout().flush();
    }
    if failed {
        std::process::exit(1);
    }
}
