//! The SQL of one index's table: a checked table name and the statements that
//! create, fill, search and count it.

use super::precision::{PgPrecision, BIT_CANDIDATES_PER_HIT};
use crate::error::{IndexError, Result};

/// The table that records every index's settings, keyed by table name.
pub const REGISTRY: &str = "sembase_indexes";

/// Longest accepted table name: PostgreSQL cuts identifiers at 63 bytes, and the
/// names made from it add up to 13 (`_staging_pkey`, see [`Table::with_suffix`]).
const MAX_NAME: usize = 50;

/// HNSW graph degree (pgvector's default).
const HNSW_M: usize = 16;
/// Candidate list while building the graph: twice pgvector's default of 64, for
/// recall on 100k+ rows of real text.
const HNSW_EF_CONSTRUCTION: usize = 128;

/// Memory for building the HNSW graph of `rows` vectors in one pass: the
/// indexed vector and about `4 * HNSW_M` neighbour slots of 16 bytes per row,
/// plus a quarter, between 64 MB and 2 GB (past that pgvector builds on disk:
/// slower, same graph). In kB, as `maintenance_work_mem` counts.
pub fn hnsw_build_memory_kb(rows: usize, layout: Layout) -> usize {
    let bytes = rows * (layout.precision.indexed_bytes(layout.dimensions) + 64 * HNSW_M) * 5 / 4;
    (bytes / 1024).clamp(64 << 10, 2 << 20)
}

/// What a table's vectors look like: their stored form and width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub precision: PgPrecision,
    pub dimensions: usize,
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

    /// `{name}_{suffix}`: another table of the same index, such as the one a
    /// queued build fills.
    pub fn with_suffix(&self, suffix: &str) -> Table {
        Table { name: format!("{}_{suffix}", self.name) }
    }

    /// The plain name (also the registry's key).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates the table, without its HNSW index (see [`Table::create_hnsw_sql`]).
    pub fn create_sql(&self, layout: Layout) -> String {
        format!(
            "CREATE TABLE \"{}\" (id text PRIMARY KEY, text text NOT NULL, \
             metadata jsonb NOT NULL, embedding {} NOT NULL)",
            self.name,
            layout.precision.column_type(layout.dimensions)
        )
    }

    /// The HNSW index's name.
    pub fn hnsw_name(&self) -> String {
        format!("{}_hnsw", self.name)
    }

    /// Builds the HNSW index over the rows there are.
    pub fn create_hnsw_sql(&self, layout: Layout) -> String {
        format!(
            "CREATE INDEX \"{}\" ON \"{}\" USING hnsw ({}) \
             WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})",
            self.hnsw_name(),
            self.name,
            layout.precision.hnsw_key(layout.dimensions)
        )
    }

    /// Builds the HNSW index over `rows` rows with the memory to do it in one
    /// pass and no statement timeout: its time grows with the rows, and a large
    /// index takes longer than any timeout meant to catch a stuck statement.
    pub fn build_hnsw_sql(&self, layout: Layout, rows: usize) -> String {
        format!(
            "SET LOCAL maintenance_work_mem = '{}kB'; SET LOCAL statement_timeout = 0; {}",
            hnsw_build_memory_kb(rows, layout),
            self.create_hnsw_sql(layout)
        )
    }

    /// Drops the HNSW index (to build it again after a bulk load).
    pub fn drop_hnsw_sql(&self) -> String {
        format!("DROP INDEX \"{}\"", self.hnsw_name())
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
    /// HNSW index), with their score; `filtered` adds `metadata @> $3`. A `bit`
    /// index takes [`BIT_CANDIDATES_PER_HIT`] times as many rows by Hamming
    /// distance, or `hnsw.ef_search` if more (so one knob, `--expansion-search`,
    /// trades speed for recall in every precision), and re-ranks them by cosine
    /// on their full vectors.
    pub fn search_sql(&self, layout: Layout, filtered: bool) -> String {
        let filter = if filtered { "WHERE metadata @> $3::jsonb " } else { "" };
        let t = &self.name;
        let query = layout.precision.query();
        let order = layout.precision.index_order(layout.dimensions);
        let score = format!("(1 - (embedding <=> {query}))::real");
        match layout.precision {
            PgPrecision::F32 | PgPrecision::F16 => format!(
                "SELECT id, text, metadata, {score} FROM \"{t}\" {filter}\
                 ORDER BY {order} LIMIT $2::bigint"
            ),
            PgPrecision::Bit => format!(
                "SELECT id, text, metadata, {score} FROM (\
                 SELECT id, text, metadata, embedding FROM \"{t}\" {filter}\
                 ORDER BY {order} LIMIT greatest($2::bigint * {BIT_CANDIDATES_PER_HIT}, \
                 current_setting('hnsw.ef_search')::bigint)) candidates \
                 ORDER BY embedding <=> {query} LIMIT $2::bigint"
            ),
        }
    }

    /// Counts the rows.
    pub fn count_sql(&self) -> String {
        format!("SELECT count(*) FROM \"{}\"", self.name)
    }

    /// The table's size on disk in bytes: rows with TOAST, the HNSW index, and
    /// everything with every index.
    pub fn size_sql(&self) -> String {
        format!(
            "SELECT pg_table_size('\"{t}\"'), coalesce(pg_relation_size(to_regclass('\"{h}\"')), 0), \
             pg_total_relation_size('\"{t}\"')",
            t = self.name,
            h = self.hnsw_name()
        )
    }
}

/// Creates the settings registry when it is missing, and adds the `precision`
/// column to one made before there was a choice.
pub fn create_registry_sql() -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {REGISTRY} (name text PRIMARY KEY, settings jsonb NOT NULL, \
         precision text NOT NULL DEFAULT 'f32'); \
         ALTER TABLE {REGISTRY} ADD COLUMN IF NOT EXISTS precision text NOT NULL DEFAULT 'f32'"
    )
}

/// Takes a transaction-scoped advisory lock named after the registry.
pub fn lock_registry_sql() -> String {
    format!("SELECT pg_advisory_xact_lock(hashtext('{REGISTRY}'))")
}

/// Records the settings `$2` and precision `$3` of table `$1`; `replace` allows
/// the name to be recorded already (a re-embedded index swapped in).
pub fn register_sql(replace: bool) -> String {
    let conflict = if replace {
        " ON CONFLICT (name) DO UPDATE SET settings = EXCLUDED.settings, \
         precision = EXCLUDED.precision"
    } else {
        ""
    };
    format!("INSERT INTO {REGISTRY} (name, settings, precision) VALUES ($1, $2, $3){conflict}")
}

/// Forgets the settings of table `$1`.
pub fn unregister_sql() -> String {
    format!("DELETE FROM {REGISTRY} WHERE name = $1")
}

/// Reads the settings and precision of table `$1` (`f32` from a registry made
/// before the column existed, which a reader does not alter).
pub fn settings_sql() -> String {
    format!(
        "SELECT settings, coalesce(to_jsonb(r) ->> 'precision', 'f32') FROM {REGISTRY} r \
         WHERE name = $1"
    )
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
        let layout = |precision| Layout { precision, dimensions: 384 };
        assert_eq!(hnsw_build_memory_kb(100, layout(PgPrecision::F32)), 64 << 10);
        let mid = hnsw_build_memory_kb(139_219, layout(PgPrecision::F32));
        assert!((400 << 10..500 << 10).contains(&mid), "{mid} kB");
        assert!(hnsw_build_memory_kb(139_219, layout(PgPrecision::Bit)) < mid / 2);
        assert_eq!(hnsw_build_memory_kb(100_000_000, layout(PgPrecision::F32)), 2 << 20);
    }

    #[test]
    fn filter_adds_containment() {
        let t = Table::new("docs").unwrap();
        for precision in [PgPrecision::F32, PgPrecision::F16, PgPrecision::Bit] {
            let layout = Layout { precision, dimensions: 8 };
            assert!(t.search_sql(layout, true).contains("WHERE metadata @> $3::jsonb ORDER BY"));
            assert!(!t.search_sql(layout, false).contains("WHERE"));
        }
    }
}
