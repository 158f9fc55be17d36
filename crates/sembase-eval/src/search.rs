//! Exact cosine top-k search over a corpus fed in blocks. It lives in
//! [`sembase_index::exact`], shared with the index's flat store.

pub use sembase_index::exact::{id_ranks, ExactSearch, Hit};
