//! Fuzzing the files of a file-backed index (see sembase-fuzz): segment files, the
//! manifest and `.npy` vectors. Each input's first line names the kind (`segment`,
//! `manifest` or `npy`) and the rest is the file. Any file opens or gives an error,
//! never a panic, a hang or an allocation sized by an unchecked field; a segment that
//! opens answers every accessor for every row.

use sembase_index::manifest::{Manifest, MANIFEST_FILE};
use sembase_index::npy::read_npy_f32;
use sembase_index::segment::Segment;

#[global_allocator]
static ALLOC: sembase_fuzz::BoundedAlloc = sembase_fuzz::BoundedAlloc;

#[test]
fn index_files() {
    let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz_corpus/index");
    let dir = sembase_fuzz::scratch_dir();
    let tokens: &[&[u8]] = &[b"SBSEG001", b"'shape': (", b"\"segments\"", b"\"graph\"", b"\n"];
    sembase_fuzz::Target::new("index", corpus).tokens(tokens).run(|input| {
        let split = input.iter().position(|&b| b == b'\n').unwrap_or(input.len());
        let file = input.get(split + 1..).unwrap_or_default();
        match &input[..split] {
            b"segment" => {
                let path = dir.path().join("seg.sbseg");
                std::fs::write(&path, file).unwrap();
                read_segment(&path);
            }
            b"manifest" => {
                std::fs::write(dir.path().join(MANIFEST_FILE), file).unwrap();
                if let Ok(manifest) = Manifest::read(dir.path()) {
                    assert_eq!(
                        manifest.files().count(),
                        manifest.segments.len() + manifest.graph.is_some() as usize
                    );
                }
            }
            b"npy" => {
                let path = dir.path().join("vectors.npy");
                std::fs::write(&path, file).unwrap();
                if let Ok(rows) = read_npy_f32(&path) {
                    assert!(rows.windows(2).all(|w| w[0].len() == w[1].len()), "ragged rows");
                }
            }
            _ => {}
        }
    });
}

/// Opens a segment and reads everything in it.
fn read_segment(path: &std::path::Path) {
    let Ok(segment) = Segment::open(path) else { return };
    assert_eq!(segment.slots().len(), segment.rows());
    let _ = segment.rows_view();
    for row in 0..segment.rows() {
        let _ = (segment.id(row), segment.text(row), segment.metadata(row));
        assert_eq!(segment.raw_vector(row).0.len(), segment.raw_vector(0).0.len());
    }
    let _ = segment.deletes();
}
