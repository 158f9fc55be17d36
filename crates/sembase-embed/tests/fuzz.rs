//! Fuzzing the GGUF header reader (see sembase-fuzz): any bytes give a header or an
//! error, never a panic, a hang or an allocation sized by an unchecked field.

use sembase_embed::gguf::read_header;

#[global_allocator]
static ALLOC: sembase_fuzz::BoundedAlloc = sembase_fuzz::BoundedAlloc;

#[test]
fn gguf_headers() {
    let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz_corpus/gguf");
    let tokens: &[&[u8]] =
        &[b"GGUF", &3u32.to_le_bytes(), &9u32.to_le_bytes(), b"general.alignment"];
    sembase_fuzz::Target::new("gguf", corpus).tokens(tokens).run(|bytes| {
        if let Ok(header) = read_header(bytes) {
            // The data starts after the header it was read from.
            assert!(header.data_offset >= 24, "data offset {}", header.data_offset);
        }
    });
}
