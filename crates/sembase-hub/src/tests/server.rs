//! A small HTTP/1.1 server on 127.0.0.1 for tests: fixed routes, `Range`
//! requests, redirects, and connections dropped midway on demand.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What the server answers on one path.
#[derive(Clone, Debug)]
pub enum Route {
    /// A body (with `Range` support) and extra headers.
    Body { body: Vec<u8>, headers: Vec<(String, String)> },
    /// A 302 to `location` with extra headers.
    Redirect { location: String, headers: Vec<(String, String)> },
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub range: Option<String>,
    pub accept: Option<String>,
}

#[derive(Default)]
pub struct State {
    pub routes: HashMap<String, Route>,
    /// Paths whose next N answers send half the body and then close the connection.
    pub drops: HashMap<String, usize>,
    pub log: Vec<Seen>,
}

pub struct Server {
    pub url: String,
    pub state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = conn {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                    serve(stream, &st);
                }
            }
        });
        Server { url: format!("http://{addr}"), state, stop, handle: Some(handle) }
    }

    pub fn route(&self, path: &str, route: Route) {
        self.state.lock().unwrap().routes.insert(path.to_string(), route);
    }

    pub fn body(&self, path: &str, body: &[u8]) {
        self.route(path, Route::Body { body: body.to_vec(), headers: Vec::new() });
    }

    pub fn unroute(&self, path: &str) {
        self.state.lock().unwrap().routes.remove(path);
    }

    pub fn drop_next(&self, path: &str, times: usize) {
        self.state.lock().unwrap().drops.insert(path.to_string(), times);
    }

    pub fn log(&self) -> Vec<Seen> {
        self.state.lock().unwrap().log.clone()
    }

    pub fn requests_for(&self, path: &str) -> Vec<Seen> {
        self.log().into_iter().filter(|s| s.path == path).collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let range = headers.get("range").cloned();
    let (route, drop_now) = {
        let mut st = state.lock().unwrap();
        st.log.push(Seen {
            path: path.clone(),
            range: range.clone(),
            accept: headers.get("accept").cloned(),
        });
        let route = st.routes.get(&path).cloned();
        let drop_now = match st.drops.get_mut(&path) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        };
        (route, drop_now)
    };
    let mut out = stream;
    let head = |status: &str, extra: &[(String, String)], len: usize| {
        let mut s = format!("HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {len}\r\n");
        for (k, v) in extra {
            s.push_str(&format!("{k}: {v}\r\n"));
        }
        s.push_str("\r\n");
        s
    };
    match route {
        None => {
            let _ = out.write_all(head("404 Not Found", &[], 9).as_bytes());
            let _ = out.write_all(b"not found");
        }
        Some(Route::Redirect { location, headers }) => {
            let mut extra = headers.clone();
            extra.push(("Location".into(), location));
            let _ = out.write_all(head("302 Found", &extra, 0).as_bytes());
        }
        Some(Route::Body { body, headers }) => {
            let start = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|s| s.parse::<usize>().ok());
            let (status, slice, mut extra) = match start {
                Some(s) if s >= body.len() => {
                    let extra =
                        vec![("Content-Range".to_string(), format!("bytes */{}", body.len()))];
                    let _ = out.write_all(head("416 Range Not Satisfiable", &extra, 0).as_bytes());
                    return;
                }
                Some(s) => (
                    "206 Partial Content",
                    &body[s..],
                    vec![(
                        "Content-Range".to_string(),
                        format!("bytes {s}-{}/{}", body.len() - 1, body.len()),
                    )],
                ),
                None => ("200 OK", &body[..], Vec::new()),
            };
            extra.extend(headers);
            let _ = out.write_all(head(status, &extra, slice.len()).as_bytes());
            if drop_now {
                let _ = out.write_all(&slice[..slice.len() / 2]);
                let _ = out.flush();
                let _ = out.shutdown(Shutdown::Both);
                return;
            }
            let _ = out.write_all(slice);
        }
    }
    let _ = out.flush();
}
