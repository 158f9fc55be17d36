use sembase_core::*;
fn main() {
    let dir = std::env::args().nth(1).unwrap();
    let bt: usize = std::env::args().nth(2).map(|s| s.parse().unwrap()).unwrap_or(16384);
    let m = LocalEmbedder::load(std::path::Path::new(&dir), "m", LoadOptions { batch: BatchLimits { max_tokens: bt, max_sequences: 512 }, ..Default::default() }).unwrap();
    let data = std::fs::read_to_string("/work/shared/data/en/stsb/test.tsv").unwrap();
    let mut texts = vec![];
    for l in data.lines().skip(1) { let f: Vec<&str> = l.split('\t').collect(); texts.push(f[0].to_string()); texts.push(f[1].to_string()); }
    let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
    let t = std::time::Instant::now();
    let e = m.embed(&refs, &EmbedOptions::default()).unwrap();
    let s = t.elapsed().as_secs_f64();
    println!("{} texts {} tokens {:.2}s {:.0} tok/s", refs.len(), e.total_tokens(), s, e.total_tokens() as f64 / s);
}
