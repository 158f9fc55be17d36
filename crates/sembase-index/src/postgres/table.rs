//! The SQL of one index's table: a checked table name and the statements that
//! create, fill, search and count it.

use crate::error::{IndexError, Result};

/// The table that records every index's settings, keyed by table name.
pub const REGISTRY: &str = "sembase_indexes";

/// Longest accepted table name: PostgreSQL cuts identifiers at 63 bytes and the
/// HNSW index's name adds a suffix.
const MAX_NAME: usize = 50;

/// HNSW graph degree (pgvector's default).
const HNSW_M: usize = 16;
/// Candidate list while building the graph: twice pgvector's default of 64, for
/// recall on 100k+ rows of real text.
const HNSW_EF_CONSTRUCTION: usize = 128;

/// Memory for building the HNSW graph of `rows` vectors `dimensions` wide in
/// one pass: the vector and about `4 * HNSW_M` neighbour slots of 16 bytes per
/// row, plus a quarter, between 64 MB and 2 GB (past that pgvector builds on
/// disk: slower, same graph). In kB, as `maintenance_work_mem` counts.
pub fn hnsw_build_memory_kb(rows: usize, dimensions: usize) -> usize {
    let bytes = rows * (4 * dimensions + 64 * HNSW_M) * 5 / 4;
    (bytes / 1024).clamp(64 << 10, 2 << 20)
}

/// A valid table name: `[a-z_][a-z0-9_]*`, at most 50 bytes, not the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    name: String,
}

impl Table {
    /// Checks `name`; anything else is [`IndexError::Invalid`].
    pub fn new(name: &str) -> Result<Self> {
        let mut chars = name.chars();
        let valid_start = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_');
        let valid_rest = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid_start || !valid_rest || name.len() > MAX_NAME || name == REGISTRY {
            return Err(IndexError::Invalid(format!(
                "{name:?} is not a usable table name: use lower-case letters, digits and _, \
                 not starting with a digit, at most {MAX_NAME} bytes, not {REGISTRY:?}"
            )));
        }
        Ok(Self { name: name.to_owned() })
    }

    /// The plain name (also the registry's key).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates the table and its HNSW index for `dimensions`-wide vectors.
    pub fn create_sql(&self, dimensions: usize) -> String {
        format!(
            "CREATE TABLE \"{}\" (id text PRIMARY KEY, text text NOT NULL, \
             metadata jsonb NOT NULL, embedding vector({dimensions}) NOT NULL); {}",
            self.name,
            self.create_hnsw_sql()
        )
    }

    /// Builds the HNSW index over the rows there are.
    pub fn create_hnsw_sql(&self) -> String {
        let t = &self.name;
        format!(
            "CREATE INDEX \"{t}_hnsw\" ON \"{t}\" USING hnsw (embedding vector_cosine_ops) \
             WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})"
        )
    }

    /// Drops the HNSW index (to build it again after a bulk load).
    pub fn drop_hnsw_sql(&self) -> String {
        format!("DROP INDEX \"{}_hnsw\"", self.name)
    }

    /// Whether the table has no rows.
    pub fn is_empty_sql(&self) -> String {
        format!("SELECT NOT EXISTS (SELECT 1 FROM \"{}\")", self.name)
    }

    /// Drops the table if it exists.
    pub fn drop_sql(&self) -> String {
        format!("DROP TABLE IF EXISTS \"{}\"", self.name)
    }

    /// Upserts rows given as four parallel arrays: ids, texts, metadata, vectors.
    pub fn upsert_sql(&self) -> String {
        format!(
            "INSERT INTO \"{}\" (id, text, metadata, embedding) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::vector[]) \
             ON CONFLICT (id) DO UPDATE SET text = EXCLUDED.text, metadata = EXCLUDED.metadata, \
             embedding = EXCLUDED.embedding",
            self.name
        )
    }

    /// Deletes the rows whose id is in the array `$1`.
    pub fn delete_sql(&self) -> String {
        format!("DELETE FROM \"{}\" WHERE id = ANY($1::text[])", self.name)
    }

    /// The `$2` nearest rows to the vector `$1` by cosine distance (through the
    /// HNSW index), with their score; `filtered` adds `metadata @> $3`.
    pub fn search_sql(&self, filtered: bool) -> String {
        let filter = if filtered { "WHERE metadata @> $3::jsonb " } else { "" };
        format!(
            "SELECT id, text, metadata, (1 - (embedding <=> $1::vector))::real FROM \"{}\" {filter}\
             ORDER BY embedding <=> $1::vector LIMIT $2::bigint",
            self.name
        )
    }

    /// Counts the rows.
    pub fn count_sql(&self) -> String {
        format!("SELECT count(*) FROM \"{}\"", self.name)
    }

    /// The table's size on disk with its indexes and TOAST, in bytes.
    pub fn size_sql(&self) -> String {
        format!("SELECT pg_total_relation_size('\"{}\"')", self.name)
    }
}

/// Creates the settings registry when it is missing.
pub fn create_registry_sql() -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {REGISTRY} (name text PRIMARY KEY, settings jsonb NOT NULL)"
    )
}

/// Takes a transaction-scoped advisory lock named after the registry.
pub fn lock_registry_sql() -> String {
    format!("SELECT pg_advisory_xact_lock(hashtext('{REGISTRY}'))")
}

/// Records the settings `$2` of table `$1`.
pub fn register_sql() -> String {
    format!("INSERT INTO {REGISTRY} (name, settings) VALUES ($1, $2)")
}

/// Forgets the settings of table `$1`.
pub fn unregister_sql() -> String {
    format!("DELETE FROM {REGISTRY} WHERE name = $1")
}

/// Reads the settings of table `$1`.
pub fn settings_sql() -> String {
    format!("SELECT settings FROM {REGISTRY} WHERE name = $1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(Table::new("minilm_corpus_2").is_ok());
        assert!(Table::new("_x").is_ok());
        for bad in ["", "2x", "Upper", "a-b", "a\"b", "a b", REGISTRY, &"x".repeat(51)] {
            assert!(matches!(Table::new(bad), Err(IndexError::Invalid(_))), "{bad:?} was accepted");
        }
    }

    #[test]
    fn build_memory_grows_with_rows_within_bounds() {
        assert_eq!(hnsw_build_memory_kb(100, 384), 64 << 10);
        let mid = hnsw_build_memory_kb(139_219, 384);
        assert!((400 << 10..500 << 10).contains(&mid), "{mid} kB");
        assert_eq!(hnsw_build_memory_kb(100_000_000, 768), 2 << 20);
    }

    #[test]
    fn filter_adds_containment() {
        let t = Table::new("docs").unwrap();
        assert!(t.search_sql(true).contains("WHERE metadata @> $3::jsonb ORDER BY"));
        assert!(!t.search_sql(false).contains("WHERE"));
    }
}
