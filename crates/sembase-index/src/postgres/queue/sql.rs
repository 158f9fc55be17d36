//! The tables of queued builds and the statements on them.
//!
//! - `sembase_builds`: one row per index with a queued build: the new vectors'
//!   settings and precision, whether it replaces a live index, and when it finished.
//! - `{T}_queue`: one row per chunk: its row count, how often it was claimed (the
//!   claim's fencing token), the worker holding it, its lease, and when it was done.
//! - `{T}_staging`: the corpus documents, keyed by (chunk, id).
//! - `{T}_next`: the new index table, filled chunk by chunk and renamed to `T`
//!   when the last chunk is done.

use crate::postgres::table::Table;

/// The table of queued builds, keyed by the live table's name.
pub const BUILDS: &str = "sembase_builds";

/// Creates [`BUILDS`] when it is missing.
pub fn create_builds_sql() -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {BUILDS} (name text PRIMARY KEY, settings jsonb NOT NULL, \
         precision text NOT NULL, replace boolean NOT NULL, \
         created_at timestamptz NOT NULL DEFAULT now(), finished_at timestamptz)"
    )
}

/// The tables of one index's queued build.
pub struct Names {
    /// The live index table (`T`).
    pub live: Table,
    /// The table being filled (`T_next`).
    pub next: Table,
    /// `"T_staging"`, quoted.
    pub staging: String,
    /// `"T_queue"`, quoted.
    pub queue: String,
}

impl Names {
    pub fn new(live: Table) -> Names {
        let name = live.name();
        Names {
            next: live.with_suffix("next"),
            staging: format!("\"{name}_staging\""),
            queue: format!("\"{name}_queue\""),
            live,
        }
    }

    /// Creates the staging and queue tables; the caller creates `T_next`.
    pub fn create_sql(&self) -> String {
        format!(
            "CREATE TABLE {s} (chunk integer NOT NULL, id text NOT NULL, title text NOT NULL, \
             text text NOT NULL, metadata jsonb NOT NULL, PRIMARY KEY (chunk, id)); \
             CREATE TABLE {q} (chunk integer PRIMARY KEY, rows integer NOT NULL, \
             attempts integer NOT NULL DEFAULT 0, worker text, lease_until timestamptz, \
             first_claimed_at timestamptz, done_at timestamptz)",
            s = self.staging,
            q = self.queue
        )
    }

    /// Drops every table of a build, finished or not.
    pub fn drop_sql(&self) -> String {
        format!("DROP TABLE IF EXISTS \"{}\", {}, {}", self.next.name(), self.staging, self.queue)
    }

    /// Renames `T_next` and its indexes to the live names (after dropping the
    /// live table when `replace`), and drops the staged corpus. DDL is
    /// transactional in PostgreSQL: inside one transaction this is the atomic swap.
    pub fn swap_sql(&self, replace: bool) -> String {
        let (live, next) = (self.live.name(), self.next.name());
        let drop = if replace { format!("DROP TABLE \"{live}\"; ") } else { String::new() };
        format!(
            "{drop}ALTER TABLE \"{next}\" RENAME TO \"{live}\"; \
             ALTER INDEX \"{next}_pkey\" RENAME TO \"{live}_pkey\"; \
             ALTER INDEX \"{}\" RENAME TO \"{}\"; DROP TABLE {}",
            self.next.hnsw_name(),
            self.live.hnsw_name(),
            self.staging
        )
    }

    /// Stages chunk `$1`: documents as parallel arrays of ids, titles, texts, metadata.
    pub fn stage_sql(&self) -> String {
        format!(
            "INSERT INTO {} (chunk, id, title, text, metadata) SELECT $1::integer, * FROM \
             unnest($2::text[], $3::text[], $4::text[], $5::jsonb[])",
            self.staging
        )
    }

    /// Queues chunks: parallel arrays of chunk numbers and row counts.
    pub fn enqueue_sql(&self) -> String {
        format!(
            "INSERT INTO {} (chunk, rows) SELECT * FROM unnest($1::integer[], $2::integer[])",
            self.queue
        )
    }

    /// Claims the lowest waiting chunk (never claimed, or its lease run out) for
    /// worker `$1` for `$2` seconds. `SKIP LOCKED` lets workers claim side by side
    /// without waiting on each other; `attempts` counts claims and fences the
    /// claim (see [`Names::complete_sql`]).
    pub fn claim_sql(&self) -> String {
        format!(
            "UPDATE {q} SET attempts = attempts + 1, worker = $1, \
             lease_until = now() + make_interval(secs => $2::float8), \
             first_claimed_at = coalesce(first_claimed_at, now()) \
             WHERE chunk = (SELECT chunk FROM {q} WHERE done_at IS NULL \
             AND (lease_until IS NULL OR lease_until < now()) \
             ORDER BY chunk LIMIT 1 FOR UPDATE SKIP LOCKED) \
             RETURNING chunk, attempts, rows",
            q = self.queue
        )
    }

    /// Extends the lease of chunk `$1` claimed as attempt `$2` by `$3` seconds;
    /// touches no row once the chunk was claimed again or done.
    pub fn renew_sql(&self) -> String {
        format!(
            "UPDATE {} SET lease_until = now() + make_interval(secs => $3::float8) \
             WHERE chunk = $1 AND attempts = $2 AND done_at IS NULL",
            self.queue
        )
    }

    /// The documents of chunk `$1`.
    pub fn chunk_docs_sql(&self) -> String {
        format!(
            "SELECT id, title, text, metadata FROM {} WHERE chunk = $1 ORDER BY id",
            self.staging
        )
    }

    /// Marks chunk `$1` done if attempt `$2` still holds it and it is not done:
    /// the row lock this takes makes a second completion of the chunk wait, then
    /// touch no row, so a chunk is applied once even when a lease ran out.
    pub fn complete_sql(&self) -> String {
        format!(
            "UPDATE {} SET done_at = now(), lease_until = NULL \
             WHERE chunk = $1 AND attempts = $2 AND done_at IS NULL",
            self.queue
        )
    }

    /// Chunks not done yet, and the seconds until the first live lease runs out.
    pub fn pending_sql(&self) -> String {
        format!(
            "SELECT count(*), extract(epoch FROM min(lease_until) FILTER \
             (WHERE lease_until >= now()) - now())::float8 FROM {} WHERE done_at IS NULL",
            self.queue
        )
    }

    /// Done / claimed / waiting chunks, rows done and in all, live workers,
    /// claims beyond the first, and seconds since the first claim and the last
    /// completion (as of `now()`).
    pub fn status_sql(&self) -> String {
        format!(
            "SELECT count(*) FILTER (WHERE done_at IS NOT NULL), \
             count(*) FILTER (WHERE done_at IS NULL AND lease_until >= now()), \
             count(*) FILTER (WHERE done_at IS NULL AND (lease_until IS NULL OR lease_until < now())), \
             coalesce(sum(rows) FILTER (WHERE done_at IS NOT NULL), 0)::bigint, \
             coalesce(sum(rows), 0)::bigint, \
             count(DISTINCT worker) FILTER (WHERE done_at IS NULL AND lease_until >= now()), \
             coalesce(sum(attempts - 1) FILTER (WHERE attempts > 1), 0)::bigint, \
             extract(epoch FROM now() - min(first_claimed_at))::float8, \
             extract(epoch FROM now() - max(done_at))::float8 FROM {}",
            self.queue
        )
    }
}

/// Whether index `$1` has a build that has not finished.
pub fn building_sql() -> String {
    format!("SELECT EXISTS (SELECT 1 FROM {BUILDS} WHERE name = $1 AND finished_at IS NULL)")
}

/// Records a build of index `$1`: settings `$2`, precision `$3`, replacing `$4`.
pub fn record_build_sql() -> String {
    format!(
        "INSERT INTO {BUILDS} (name, settings, precision, replace) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (name) DO UPDATE SET settings = EXCLUDED.settings, \
         precision = EXCLUDED.precision, replace = EXCLUDED.replace, created_at = now(), \
         finished_at = NULL"
    )
}

/// The build of index `$1`: settings, precision, replace, finished; `lock`
/// takes its row (skipping it when another transaction holds it).
pub fn build_sql(lock: bool) -> String {
    let lock = if lock { " FOR UPDATE SKIP LOCKED" } else { "" };
    format!(
        "SELECT settings, precision, replace, finished_at IS NOT NULL, \
         extract(epoch FROM created_at)::float8 FROM {BUILDS} WHERE name = $1{lock}"
    )
}

/// Marks the build of index `$1` finished.
pub fn finished_sql() -> String {
    format!("UPDATE {BUILDS} SET finished_at = now() WHERE name = $1")
}

/// Forgets the build of index `$1`.
pub fn forget_build_sql() -> String {
    format!("DELETE FROM {BUILDS} WHERE name = $1")
}
