//! Connections to one database, kept for reuse: each concurrent reader takes
//! its own, up to a cap ([`limits`](super::limits)), and every connection
//! prepares a statement once and keeps it.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

use postgres::{Client, Config, NoTls, Statement};

use super::limits::{self, Limits};
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

/// The pool's connections: those idle, and how many exist (idle or on loan).
#[derive(Default)]
struct Slots {
    idle: Vec<Session>,
    open: usize,
}

/// Connections to one database; [`Pool::get`] takes an idle one, opens a new one
/// while fewer than the cap exist, or else waits for one to come back.
pub struct Pool {
    config: Config,
    ef_search: usize,
    limits: Limits,
    slots: Mutex<Slots>,
    returned: Condvar,
}

impl Pool {
    /// A pool for `url` (`postgres://user[:password]@host[:port]/db` or the
    /// `key=value` form, with the pool's [`limits`](super::limits)), checked by
    /// opening one connection. No TLS: meant for loopback or a private network.
    /// Searches keep `ef_search` candidates.
    pub fn connect(url: &str, ef_search: usize) -> Result<Self> {
        if !(1..=MAX_EF_SEARCH).contains(&ef_search) {
            return Err(IndexError::Invalid(format!(
                "ef_search must be between 1 and {MAX_EF_SEARCH}, not {ef_search}"
            )));
        }
        let (config, limits) = limits::parse(url)?;
        let pool =
            Self { config, ef_search, limits, slots: Mutex::default(), returned: Condvar::new() };
        let first = pool.open()?;
        let mut slots = pool.slots();
        slots.idle.push(first);
        slots.open = 1;
        drop(slots);
        Ok(pool)
    }

    /// An idle connection, a new one while fewer than `pool_max_conns` exist, or
    /// else the first one given back within the connect timeout.
    pub fn get(&self) -> Result<Pooled<'_>> {
        let deadline = self.limits.connect_timeout.map(|t| Instant::now() + t);
        let mut slots = self.slots();
        loop {
            if let Some(session) = slots.idle.pop() {
                if session.client.is_closed() {
                    slots.open -= 1;
                    continue;
                }
                return Ok(Pooled { pool: self, session: Some(session) });
            }
            if slots.open < self.limits.max_conns {
                slots.open += 1;
                drop(slots);
                return match self.open() {
                    Ok(session) => Ok(Pooled { pool: self, session: Some(session) }),
                    Err(e) => {
                        self.release(None);
                        Err(e)
                    }
                };
            }
            slots = match deadline {
                None => self.returned.wait(slots).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(self.exhausted());
                    }
                    self.returned.wait_timeout(slots, left).unwrap_or_else(|e| e.into_inner()).0
                }
            };
        }
    }

    fn exhausted(&self) -> IndexError {
        let waited = self.limits.connect_timeout.unwrap_or_default();
        IndexError::Database(format!(
            "all {} connections of the pool are in use and none was given back within {} s; \
             raise pool_max_conns in the database URL, or make the statements faster",
            self.limits.max_conns,
            waited.as_secs()
        ))
    }

    /// Takes back a connection on loan (`None`: it was closed or never opened),
    /// waking one caller waiting for it.
    fn release(&self, session: Option<Session>) {
        let mut slots = self.slots();
        match session.filter(|s| !s.client.is_closed()) {
            Some(session) => slots.idle.push(session),
            None => slots.open -= 1,
        }
        drop(slots);
        self.returned.notify_one();
    }

    fn slots(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a connection with the session settings every search relies on:
    /// `ef_search` candidates, iterative scans so that a metadata filter still
    /// yields `k` hits in exact distance order when the nearest rows do not match,
    /// and the statement timeout.
    fn open(&self) -> Result<Session> {
        let mut client = self.config.connect(NoTls)?;
        client.batch_execute(&format!(
            "SET hnsw.ef_search = {}; SET hnsw.iterative_scan = strict_order; \
             SET statement_timeout = '{}'",
            self.ef_search, self.limits.statement_timeout
        ))?;
        Ok(Session { client, statements: HashMap::new() })
    }
}

impl Drop for Pool {
    /// Closes the idle connections on a thread of their own: closing blocks on
    /// the client's internal runtime, which panics on a thread that drives async
    /// tasks (a server dropping its indexes as it shuts down).
    fn drop(&mut self) {
        let idle =
            std::mem::take(&mut self.slots.get_mut().unwrap_or_else(|e| e.into_inner()).idle);
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
        self.pool.release(self.session.take());
    }
}

/// Against the test server (`SEMBASE_TEST_PG_URL`, from `scripts/postgres.sh start`).
#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// The test server's URL with `params` added.
    fn url(params: &str) -> String {
        let url = std::env::var("SEMBASE_TEST_PG_URL").unwrap_or_else(|_| {
            panic!(
                "SEMBASE_TEST_PG_URL is not set: start a server with `scripts/postgres.sh start` \
                 and `export SEMBASE_TEST_PG_URL=$(scripts/postgres.sh url)`"
            )
        });
        format!("{url}{}{params}", if url.contains('?') { '&' } else { '?' })
    }

    #[test]
    fn a_statement_past_the_timeout_fails_with_a_clear_error() {
        let pool = Pool::connect(&url("statement_timeout=300ms"), EF_SEARCH).unwrap();
        let start = Instant::now();
        let err: IndexError =
            pool.get().unwrap().client().batch_execute("SELECT pg_sleep(30)").unwrap_err().into();
        assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
        let msg = err.to_string();
        assert!(
            msg.starts_with("database: ERROR: canceling statement due to statement timeout")
                && msg.contains("statement_timeout= in the database URL"),
            "{msg}"
        );
        // The connection is still good for the next statement.
        pool.get().unwrap().client().batch_execute("SELECT pg_sleep(0.01)").unwrap();

        let pool = Pool::connect(&url(""), EF_SEARCH).unwrap();
        let row = pool.get().unwrap().client().query_one("SHOW statement_timeout", &[]).unwrap();
        assert_eq!(row.get::<_, String>(0), "1min");
    }

    #[test]
    fn the_pool_keeps_to_its_cap_and_waits_for_a_connection() {
        let pool = Pool::connect(&url("pool_max_conns=2&connect_timeout=1"), EF_SEARCH).unwrap();
        let pid = |p: &mut Pooled<'_>| -> i32 {
            p.client().query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0)
        };
        let (mut a, mut b) = (pool.get().unwrap(), pool.get().unwrap());
        assert_ne!(pid(&mut a), pid(&mut b));
        let start = Instant::now();
        let err = pool.get().err().expect("a third connection past the cap of 2");
        assert!(start.elapsed() >= Duration::from_millis(900), "{:?}", start.elapsed());
        assert_eq!(
            err.to_string(),
            "database: all 2 connections of the pool are in use and none was given back within \
             1 s; raise pool_max_conns in the database URL, or make the statements faster"
        );
        // One given back while a caller waits is handed to it.
        let first = pid(&mut a);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| pid(&mut pool.get().unwrap()));
            std::thread::sleep(Duration::from_millis(200));
            drop(a);
            assert_eq!(waiter.join().unwrap(), first);
        });
        drop(b);
        assert_eq!(pool.slots().open, 2);
    }
}
