//! Connections to one database, kept for reuse: each concurrent reader takes
//! its own, and every connection prepares a statement once and keeps it.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::str::FromStr;
use std::sync::Mutex;

use postgres::{Client, Config, NoTls, Statement};

use crate::error::{IndexError, Result};

/// Candidates the HNSW search keeps (pgvector's `hnsw.ef_search`, default 40):
/// 100 brings recall@10 on 139k MiniLM vectors of sentences to 0.99 (see
/// bench/index_bench.py).
pub const EF_SEARCH: usize = 100;
/// The largest `hnsw.ef_search` pgvector accepts.
const MAX_EF_SEARCH: usize = 1000;

/// One connection with the statements it has prepared, keyed by SQL text.
pub struct Session {
    client: Client,
    statements: HashMap<String, Statement>,
}

impl Session {
    /// The statement for `sql`, prepared on first use.
    pub fn statement(&mut self, sql: &str) -> Result<Statement> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql)?;
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    /// The connection itself.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }
}

/// Idle connections to one database; [`Pool::get`] opens a new one when none is idle.
pub struct Pool {
    config: Config,
    ef_search: usize,
    idle: Mutex<Vec<Session>>,
}

impl Pool {
    /// A pool for `url` (`postgres://user[:password]@host[:port]/db` or the
    /// `key=value` form), checked by opening one connection. No TLS: meant for
    /// loopback or a private network. Searches keep `ef_search` candidates.
    pub fn connect(url: &str, ef_search: usize) -> Result<Self> {
        if !(1..=MAX_EF_SEARCH).contains(&ef_search) {
            return Err(IndexError::Invalid(format!(
                "ef_search must be between 1 and {MAX_EF_SEARCH}, not {ef_search}"
            )));
        }
        let config = Config::from_str(url)
            .map_err(|e| IndexError::Database(format!("bad database URL: {e}")))?;
        let pool = Self { config, ef_search, idle: Mutex::new(Vec::new()) };
        let first = pool.open()?;
        pool.idle.lock().unwrap_or_else(|e| e.into_inner()).push(first);
        Ok(pool)
    }

    /// An idle connection, or a new one.
    pub fn get(&self) -> Result<Pooled<'_>> {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let session = match idle {
            Some(session) if !session.client.is_closed() => session,
            _ => self.open()?,
        };
        Ok(Pooled { pool: self, session: Some(session) })
    }

    /// Opens a connection with the session settings every search relies on:
    /// `ef_search` candidates, and iterative scans so that a metadata filter still
    /// yields `k` hits in exact distance order when the nearest rows do not match.
    fn open(&self) -> Result<Session> {
        let mut client = self.config.connect(NoTls)?;
        client.batch_execute(&format!(
            "SET hnsw.ef_search = {}; SET hnsw.iterative_scan = strict_order",
            self.ef_search
        ))?;
        Ok(Session { client, statements: HashMap::new() })
    }
}

impl Drop for Pool {
    /// Closes the idle connections on a thread of their own: closing blocks on
    /// the client's internal runtime, which panics on a thread that drives async
    /// tasks (a server dropping its indexes as it shuts down).
    fn drop(&mut self) {
        let idle = std::mem::take(self.idle.get_mut().unwrap_or_else(|e| e.into_inner()));
        if !idle.is_empty() {
            let _ = std::thread::spawn(move || drop(idle)).join();
        }
    }
}

/// A connection on loan; it goes back to the pool when dropped, unless closed.
pub struct Pooled<'a> {
    pool: &'a Pool,
    session: Option<Session>,
}

impl Deref for Pooled<'_> {
    type Target = Session;
    fn deref(&self) -> &Session {
        self.session.as_ref().expect("present until drop")
    }
}

impl DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Session {
        self.session.as_mut().expect("present until drop")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(session) = self.session.take().filter(|s| !s.client.is_closed()) {
            self.pool.idle.lock().unwrap_or_else(|e| e.into_inner()).push(session);
        }
    }
}
