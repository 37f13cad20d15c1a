//! A fake Hugging Face hub for the app's tests: a hand-written HTTP/1.1 server on 127.0.0.1
//! answering the requests hf-hub makes (repo info, `resolve` with `Range`, `x-repo-commit`,
//! etags) with the real stories260K files, each file's body held back `delay` so a test can act
//! while a download is in flight. The engine's own hub tests (`crates/engine/tests/hub.rs`)
//! cover the protocol in depth; this one only serves.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The shared stories260K model: `shared/` beside the checkout, found from the crate that
/// includes this module (the app's tests, or the CLI's through `#[path]`).
pub fn model_dir() -> std::path::PathBuf {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .map(|a| a.join("shared/models/stories260K"))
        .find(|d| d.is_dir())
        .unwrap_or_else(|| panic!("no shared/models/stories260K above {}", here.display()))
}
const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

pub struct FakeHub {
    pub addr: SocketAddr,
    /// The files whose body was sent (not size probes), in order.
    pub served: Arc<Mutex<Vec<String>>>,
    /// Milliseconds each file body is held back.
    pub delay_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl FakeHub {
    /// Serves stories260K's files as repo `id`.
    pub fn start(id: &str) -> FakeHub {
        let mut files = BTreeMap::new();
        let dir = model_dir();
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e} (the shared stories260K model)", dir.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_file() {
                let name = path.file_name().unwrap().to_str().unwrap().to_string();
                files.insert(name, std::fs::read(&path).unwrap());
            }
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let hub = FakeHub {
            addr: listener.local_addr().unwrap(),
            served: Arc::default(),
            delay_ms: Arc::default(),
            stop: Arc::default(),
        };
        let (served, delay, stop) = (hub.served.clone(), hub.delay_ms.clone(), hub.stop.clone());
        let id = id.to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let (files, served, delay, id) =
                    (files.clone(), served.clone(), delay.clone(), id.clone());
                // One thread per connection, so a held-back body does not block the others.
                std::thread::spawn(move || {
                    if let Ok(s) = stream {
                        let _ = serve(s, &id, &files, &served, &delay);
                    }
                });
            }
        });
        hub
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(
    stream: TcpStream,
    id: &str,
    files: &BTreeMap<String, Vec<u8>>,
    served: &Mutex<Vec<String>>,
    delay: &AtomicU64,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let head = parts.next() == Some("HEAD");
    let path = parts.next().unwrap_or("").to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
        }
    }
    let mut out = stream;
    if path.starts_with(&format!("/api/models/{id}/revision/")) {
        let siblings: Vec<_> = files
            .keys()
            .map(|f| serde_json::json!({ "rfilename": f }))
            .collect();
        let body = serde_json::json!({ "id": id, "sha": SHA, "siblings": siblings }).to_string();
        return respond(&mut out, "200 OK", &[], body.as_bytes(), head);
    }
    let prefix = format!("/{id}/resolve/");
    let file = path
        .strip_prefix(&prefix)
        .and_then(|rest| rest.split_once('/'))
        .map(|(_, f)| f.to_string());
    let Some(content) = file.as_ref().and_then(|f| files.get(f)) else {
        let h = [("x-error-code", "EntryNotFound".to_string())];
        return respond(&mut out, "404 Not Found", &h, b"{}", head);
    };
    let file = file.unwrap();
    let total = content.len();
    let sha = peft_engine::fsutil::sha256_file(&model_dir().join(&file))
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let tag = format!("\"{sha}\"");
    let mut headers = vec![("x-repo-commit", SHA.to_string())];
    if file.ends_with(".safetensors") {
        headers.push(("x-linked-etag", tag));
        headers.push(("etag", "\"pointer-oid\"".into()));
    } else {
        headers.push(("etag", tag));
    }
    let (status, start, end) = match range.as_deref().and_then(parse_range) {
        Some((start, end)) if start < total => {
            let end = end.unwrap_or(total - 1).min(total - 1);
            headers.push(("content-range", format!("bytes {start}-{end}/{total}")));
            ("206 Partial Content", start, end + 1)
        }
        _ => ("200 OK", 0, total),
    };
    // hf-hub asks for the first byte to learn a file's size and etag: not a transfer.
    let probe = range.as_deref() == Some("bytes=0-0");
    if !head && !probe {
        std::thread::sleep(Duration::from_millis(delay.load(Ordering::SeqCst)));
        served.lock().unwrap().push(file);
    }
    respond(&mut out, status, &headers, &content[start..end], head)
}

fn parse_range(v: &str) -> Option<(usize, Option<usize>)> {
    let (a, b) = v.strip_prefix("bytes=")?.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()))
}

fn respond(
    out: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
    head: bool,
) -> std::io::Result<()> {
    let mut text = format!("HTTP/1.1 {status}\r\nconnection: close\r\n");
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    out.write_all(text.as_bytes())?;
    if !head {
        out.write_all(body)?;
    }
    out.flush()?;
    out.shutdown(std::net::Shutdown::Both)
}
