//! Fuzzing the E5S1 reader and converter (see sembase-fuzz): any image gives an error
//! or a directory whose model.safetensors reads back, never a panic, a hang or an
//! allocation sized by an unchecked field. A unit test, as the format is crate-private.

use crate::e5s1::tests::tokenizer_for;
use crate::e5s1::{convert, E5s1};

#[global_allocator]
static ALLOC: sembase_fuzz::BoundedAlloc = sembase_fuzz::BoundedAlloc;

#[test]
fn e5s1_images() {
    let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz_corpus/e5s1");
    let out = sembase_fuzz::scratch_dir();
    let tokens: &[&[u8]] = &[b"E5S1", b"emb.pos", b"l0.q.w", &4u32.to_le_bytes()];
    sembase_fuzz::Target::new("e5s1", corpus).tokens(tokens).run(|bytes| {
        // Conversion needs the tokenizer of the image's own pieces to reach the weights.
        let Ok(model) = E5s1::parse(bytes) else { return };
        let tokenizer = tokenizer_for(&model.pieces);
        if convert(bytes, &tokenizer, out.path(), 128).is_ok() {
            let weights = std::fs::read(out.path().join("model.safetensors")).unwrap();
            safetensors::SafeTensors::deserialize(&weights).expect("the written weights read back");
        }
    });
}
