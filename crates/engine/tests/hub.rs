//! `model::hub` against a fake hub: a hand-written HTTP/1.1 server on 127.0.0.1 that answers
//! the requests hf-hub makes (`/api/models/{repo}/revision/{rev}`, `/{repo}/resolve/{rev}/{file}`
//! with `Range`, `x-repo-commit`, `etag`/`x-linked-etag`, `Content-Range`), serving the real
//! stories260K files. Nothing here touches the real hub.

use peft_engine::model::hub::{download_model, DownloadEvent, HubOptions, HubRef};
use peft_engine::Error;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

const MODEL_DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/models/stories260K/"
);
const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
const TOKEN: &str = "hf_test_token";
const WANTED: [&str; 5] = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "model.safetensors",
];

#[derive(Clone)]
struct FakeRepo {
    id: String,
    sha: String,
    files: BTreeMap<String, Vec<u8>>,
    /// Listed in the repo info but answered with 404.
    listed_only: Vec<String>,
    /// Served with one byte changed, under the original's sha256 (a corrupted transfer).
    corrupt: Option<String>,
}

/// Every top-level file of stories260K, as repo `id`.
fn stories(id: &str) -> FakeRepo {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(MODEL_DIR).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            files.insert(name, std::fs::read(&path).unwrap());
        }
    }
    FakeRepo {
        id: id.to_string(),
        sha: SHA.to_string(),
        files,
        listed_only: Vec::new(),
        corrupt: None,
    }
}

fn original(file: &str) -> Vec<u8> {
    std::fs::read(Path::new(MODEL_DIR).join(file)).unwrap()
}

#[derive(Clone, Debug)]
struct Req {
    path: String,
    range: Option<String>,
    auth: Option<String>,
}

struct FakeHub {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Req>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeHub {
    /// `truncate`: a file whose bodies are cut after half their Content-Length, every time.
    fn start(repos: Vec<FakeRepo>, truncate: Option<&str>) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log2, stop2) = (log.clone(), stop.clone());
        let truncate = truncate.map(String::from);
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    // One request per connection (`Connection: close`); errors only mean the
                    // client went away.
                    let _ = serve(stream, &repos, truncate.as_deref(), &log2);
                }
            }
        });
        FakeHub {
            addr,
            log,
            stop,
            thread: Some(thread),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<Req> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes `incoming()`
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The content's sha256, as the hub gives for LFS files (which the download verifies).
fn etag(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

fn serve(
    stream: TcpStream,
    repos: &[FakeRepo],
    truncate: Option<&str>,
    log: &Mutex<Vec<Req>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let (mut range, mut auth) = (None, None);
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "range" => range = Some(v.trim().to_string()),
                "authorization" => auth = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    log.lock().unwrap().push(Req {
        path: path.clone(),
        range: range.clone(),
        auth,
    });
    let mut out = stream;
    let not_found = |out: &mut TcpStream, code: &str| {
        respond(
            out,
            "404 Not Found",
            &[("x-error-code", code.into())],
            b"{}",
            2,
            false,
        )
    };

    if let Some(rest) = path.strip_prefix("/api/models/") {
        let Some((id, rev)) = rest.rsplit_once("/revision/") else {
            return not_found(&mut out, "RepoNotFound");
        };
        let Some(repo) = repos.iter().find(|r| r.id == id) else {
            return not_found(&mut out, "RepoNotFound");
        };
        if rev != "main" && rev != repo.sha {
            return not_found(&mut out, "RevisionNotFound");
        }
        let siblings: Vec<_> = repo
            .files
            .keys()
            .chain(&repo.listed_only)
            .map(|f| serde_json::json!({ "rfilename": f }))
            .collect();
        let body = serde_json::json!({ "id": id, "sha": repo.sha, "siblings": siblings });
        let body = body.to_string().into_bytes();
        let headers = [("content-type", "application/json".to_string())];
        return respond(
            &mut out,
            "200 OK",
            &headers,
            &body,
            body.len(),
            method == "HEAD",
        );
    }

    let Some((id, rest)) = path.trim_start_matches('/').split_once("/resolve/") else {
        return not_found(&mut out, "RepoNotFound");
    };
    let Some(repo) = repos.iter().find(|r| r.id == id) else {
        return not_found(&mut out, "RepoNotFound");
    };
    let Some((rev, file)) = rest.split_once('/') else {
        return not_found(&mut out, "EntryNotFound");
    };
    if rev != "main" && rev != repo.sha {
        return not_found(&mut out, "RevisionNotFound");
    }
    let Some(content) = repo.files.get(file) else {
        return not_found(&mut out, "EntryNotFound");
    };
    let total = content.len();
    let tag = etag(content);
    let flipped;
    let content: &[u8] = if repo.corrupt.as_deref() == Some(file) {
        let mut c = content.clone();
        c[0] ^= 1;
        flipped = c;
        &flipped
    } else {
        content
    };
    let mut headers = vec![("x-repo-commit", repo.sha.clone())];
    if file.ends_with(".safetensors") {
        // Like an LFS file: the content hash is the linked etag, the plain etag is the pointer's.
        headers.push(("x-linked-etag", format!("\"{tag}\"")));
        headers.push(("etag", "\"pointer-oid\"".into()));
    } else {
        headers.push(("etag", format!("\"{tag}\"")));
    }
    let (status, start, end) = match range.as_deref().and_then(parse_range) {
        Some((start, _)) if start >= total => {
            headers.push(("content-range", format!("bytes */{total}")));
            return respond(
                &mut out,
                "416 Range Not Satisfiable",
                &headers,
                b"",
                0,
                false,
            );
        }
        Some((start, end)) => {
            let end = end.unwrap_or(total - 1).min(total - 1);
            headers.push(("content-range", format!("bytes {start}-{end}/{total}")));
            ("206 Partial Content", start, end + 1)
        }
        None => ("200 OK", 0, total),
    };
    let body = &content[start..end];
    let send = if truncate == Some(file) && body.len() > 1 {
        body.len() / 2
    } else {
        body.len()
    };
    respond(&mut out, status, &headers, body, send, method == "HEAD")
}

fn parse_range(v: &str) -> Option<(usize, Option<usize>)> {
    let (a, b) = v.strip_prefix("bytes=")?.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()))
}

/// Writes headers announcing all of `body`, then only its first `send` bytes, then closes.
fn respond(
    out: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
    send: usize,
    head: bool,
) -> std::io::Result<()> {
    let mut text = format!("HTTP/1.1 {status}\r\nconnection: close\r\n");
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    out.write_all(text.as_bytes())?;
    if !head {
        out.write_all(&body[..send])?;
    }
    out.flush()?;
    out.shutdown(std::net::Shutdown::Both)
}

fn opts(endpoint: &str, cache: &Path) -> HubOptions {
    HubOptions {
        endpoint: Some(endpoint.to_string()),
        cache_dir: Some(cache.to_path_buf()),
        token: Some(TOKEN.to_string()),
        offline: false,
    }
}

fn hub_ref(s: &str) -> HubRef {
    HubRef::parse(s).unwrap()
}

fn run(
    hub: &HubRef,
    opts: &HubOptions,
    cancel: Option<&AtomicBool>,
) -> (Result<PathBuf, Error>, Vec<DownloadEvent>) {
    let mut events = Vec::new();
    let r = download_model(hub, opts, &mut |e| events.push(e), cancel);
    (r, events)
}

fn hub_message(r: Result<PathBuf, Error>) -> String {
    match r {
        Err(Error::Hub { repo, message }) => format!("{repo}: {message}"),
        other => panic!("expected a hub error, got {other:?}"),
    }
}

fn resolve_requests(hub: &FakeHub, file: &str) -> Vec<Req> {
    let suffix = format!("/{file}");
    hub.requests()
        .into_iter()
        .filter(|r| r.path.contains("/resolve/") && r.path.ends_with(&suffix))
        .collect()
}

/// Checks one file's events: Start, monotonic Progress ending at the size, Done.
fn check_events(events: &[DownloadEvent], file: &str, size: u64) {
    let mine: Vec<_> = events
        .iter()
        .filter(|e| match e {
            DownloadEvent::Start { file: f, .. }
            | DownloadEvent::Progress { file: f, .. }
            | DownloadEvent::Done { file: f }
            | DownloadEvent::Cached { file: f } => f == file,
        })
        .collect();
    assert!(
        matches!(mine.first(), Some(DownloadEvent::Start { total_bytes, .. }) if *total_bytes == size),
        "{file}: {mine:?}"
    );
    assert!(
        matches!(mine.last(), Some(DownloadEvent::Done { .. })),
        "{file}: {mine:?}"
    );
    let done: Vec<u64> = mine
        .iter()
        .filter_map(|e| match e {
            DownloadEvent::Progress {
                bytes_done,
                total_bytes,
                ..
            } => {
                assert_eq!(*total_bytes, size);
                Some(*bytes_done)
            }
            _ => None,
        })
        .collect();
    assert!(!done.is_empty(), "{file}: no progress");
    assert!(done.windows(2).all(|w| w[0] < w[1]), "{file}: {done:?}");
    assert_eq!(*done.last().unwrap(), size, "{file}");
}

#[test]
fn downloads_into_the_standard_cache_layout() {
    let server = FakeHub::start(vec![stories("org/tiny")], None);
    let cache = tempfile::tempdir().unwrap();
    let (r, events) = run(
        &hub_ref("org/tiny"),
        &opts(&server.endpoint(), cache.path()),
        None,
    );
    let dir = r.unwrap();

    let repo_dir = cache.path().join("models--org--tiny");
    assert_eq!(dir, repo_dir.join("snapshots").join(SHA));
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
        SHA
    );
    assert!(
        !repo_dir.join("refs").join(SHA).exists(),
        "stray refs/<sha>"
    );
    for f in WANTED {
        let entry = dir.join(f);
        assert_eq!(std::fs::read(&entry).unwrap(), original(f), "{f}");
        // Python's layout: a relative symlink into blobs/.
        #[cfg(unix)]
        {
            let link = std::fs::read_link(&entry).unwrap();
            assert!(link.starts_with("../../blobs"), "{f}: {link:?}");
        }
        check_events(&events, f, original(f).len() as u64);
    }
    // Only what a model needs, and no leftovers of the transfer.
    for f in ["tokenizer.model", "special_tokens_map.json", "SOURCE.md"] {
        assert!(!dir.join(f).exists(), "{f}");
        assert!(resolve_requests(&server, f).is_empty(), "{f} requested");
    }
    for e in std::fs::read_dir(repo_dir.join("blobs")).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(!name.ends_with(".part"), "{name}");
    }
    // The large file took several progress events; every request carried the token.
    let big = events
        .iter()
        .filter(
            |e| matches!(e, DownloadEvent::Progress { file, .. } if file == "model.safetensors"),
        )
        .count();
    assert!(big >= 5, "{big}");
    let want = format!("Bearer {TOKEN}");
    assert!(server
        .requests()
        .iter()
        .all(|r| r.auth.as_deref() == Some(want.as_str())));
    // Files are asked for by commit, not branch.
    assert!(resolve_requests(&server, "config.json")
        .iter()
        .all(|r| r.path.contains(&format!("/resolve/{SHA}/"))));
}

#[test]
fn second_call_uses_the_cache_without_the_network() {
    let cache = tempfile::tempdir().unwrap();
    let hub = hub_ref("org/tiny");
    let server = FakeHub::start(vec![stories("org/tiny")], None);
    let endpoint = server.endpoint();
    let first = run(&hub, &opts(&endpoint, cache.path()), None).0.unwrap();

    // Online again: one repo-info call, no file requests, everything Cached.
    let before = server.requests().len();
    let (r, events) = run(&hub, &opts(&endpoint, cache.path()), None);
    assert_eq!(r.unwrap(), first);
    let new: Vec<_> = server.requests()[before..].to_vec();
    assert!(new.iter().all(|r| r.path.starts_with("/api/")), "{new:?}");
    assert_eq!(events.len(), WANTED.len());
    assert!(events
        .iter()
        .all(|e| matches!(e, DownloadEvent::Cached { .. })));

    // Server gone: the cached snapshot is used.
    drop(server);
    let (r, events) = run(&hub, &opts(&endpoint, cache.path()), None);
    assert_eq!(r.unwrap(), first);
    assert_eq!(events.len(), WANTED.len());

    // Offline on purpose: same, and never a request.
    let offline = HubOptions {
        offline: true,
        ..opts("http://127.0.0.1:9", cache.path())
    };
    assert_eq!(run(&hub, &offline, None).0.unwrap(), first);
    for f in WANTED {
        assert_eq!(std::fs::read(first.join(f)).unwrap(), original(f));
    }

    // Offline with an empty cache, or a revision never fetched: a clear error.
    let empty = tempfile::tempdir().unwrap();
    let msg = hub_message(
        run(
            &hub,
            &HubOptions {
                cache_dir: Some(empty.path().into()),
                ..offline.clone()
            },
            None,
        )
        .0,
    );
    assert!(msg.contains("offline") && msg.contains("org/tiny"), "{msg}");
    let msg = hub_message(run(&hub_ref("org/tiny@v2"), &offline, None).0);
    assert!(msg.contains("offline") && msg.contains("v2"), "{msg}");
}

#[test]
fn unreachable_hub_without_cache_is_a_clear_error() {
    // A port nobody listens on: bind, note it, close.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let cache = tempfile::tempdir().unwrap();
    let msg = hub_message(run(&hub_ref("org/tiny"), &opts(&endpoint, cache.path()), None).0);
    assert!(msg.contains(&format!("cannot reach {endpoint}")), "{msg}");
    assert!(msg.contains("HF_HUB_OFFLINE=1"), "{msg}");
}

#[test]
fn missing_repo_revision_and_files_are_named() {
    let mut no_tokenizer = stories("org/notok");
    no_tokenizer.files.remove("tokenizer.json");
    let mut ghost = stories("org/ghost");
    ghost.files.remove("tokenizer.json");
    ghost.listed_only.push("tokenizer.json".into());
    let mut no_weights = stories("org/noweights");
    no_weights.files.remove("model.safetensors");
    let server = FakeHub::start(
        vec![stories("org/tiny"), no_tokenizer, ghost, no_weights],
        None,
    );
    let cache = tempfile::tempdir().unwrap();
    let o = opts(&server.endpoint(), cache.path());

    let msg = hub_message(run(&hub_ref("org/nope"), &o, None).0);
    assert!(
        msg.contains("repository org/nope not found (or private: set HF_TOKEN)"),
        "{msg}"
    );
    let msg = hub_message(run(&hub_ref("org/tiny@v9"), &o, None).0);
    assert!(msg.contains("revision `v9` not found in org/tiny"), "{msg}");
    // Not listed by the repo: caught before any file request.
    let msg = hub_message(run(&hub_ref("org/notok"), &o, None).0);
    assert!(
        msg.contains("tokenizer.json") && msg.contains("org/notok"),
        "{msg}"
    );
    assert!(resolve_requests(&server, "config.json").is_empty());
    // Listed but answered 404.
    let msg = hub_message(run(&hub_ref("org/ghost"), &o, None).0);
    assert!(
        msg.contains("file tokenizer.json not found in org/ghost"),
        "{msg}"
    );
    let msg = hub_message(run(&hub_ref("org/noweights"), &o, None).0);
    assert!(msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn sharded_weights_fetch_the_index_and_every_shard() {
    let whole = original("model.safetensors");
    let (a, b) = whole.split_at(whole.len() / 3);
    let index = serde_json::json!({
        "metadata": { "total_size": whole.len() },
        "weight_map": {
            "x.weight": "model-00001-of-00002.safetensors",
            "y.weight": "model-00002-of-00002.safetensors",
            "z.weight": "model-00001-of-00002.safetensors",
        }
    })
    .to_string();
    let mut sharded = stories("org/sharded");
    sharded.files.remove("model.safetensors");
    sharded.files.insert(
        "model.safetensors.index.json".into(),
        index.clone().into_bytes(),
    );
    sharded
        .files
        .insert("model-00001-of-00002.safetensors".into(), a.to_vec());
    sharded
        .files
        .insert("model-00002-of-00002.safetensors".into(), b.to_vec());
    let mut broken = sharded.clone();
    broken.id = "org/broken".into();
    broken.files.remove("model-00002-of-00002.safetensors");
    let server = FakeHub::start(vec![sharded, broken], None);
    let cache = tempfile::tempdir().unwrap();
    let o = opts(&server.endpoint(), cache.path());

    let (r, events) = run(&hub_ref("org/sharded"), &o, None);
    let dir = r.unwrap();
    assert_eq!(
        std::fs::read(dir.join("model-00001-of-00002.safetensors")).unwrap(),
        a
    );
    assert_eq!(
        std::fs::read(dir.join("model-00002-of-00002.safetensors")).unwrap(),
        b
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("model.safetensors.index.json")).unwrap(),
        index
    );
    check_events(&events, "model-00002-of-00002.safetensors", b.len() as u64);
    // Offline resolution follows the index too.
    let off = HubOptions {
        offline: true,
        ..o.clone()
    };
    let (r, events) = run(&hub_ref("org/sharded"), &off, None);
    assert_eq!(r.unwrap(), dir);
    assert_eq!(events.len(), 7, "{events:?}");

    let msg = hub_message(run(&hub_ref("org/broken"), &o, None).0);
    assert!(msg.contains("model-00002-of-00002.safetensors"), "{msg}");
}

#[test]
fn interrupted_transfer_errors_cleanly_then_resumes() {
    let cache = tempfile::tempdir().unwrap();
    let hub = hub_ref("org/tiny");
    let size = original("model.safetensors").len();
    let bad = FakeHub::start(vec![stories("org/tiny")], Some("model.safetensors"));
    let (r, events) = run(&hub, &opts(&bad.endpoint(), cache.path()), None);
    let msg = hub_message(r);
    assert!(
        msg.contains("download of model.safetensors interrupted after"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("of {size} bytes; run again to resume")),
        "{msg}"
    );
    drop(bad);

    // Nothing half-written in the snapshot; the partial bytes wait in blobs/<etag>.part.
    let repo_dir = cache.path().join("models--org--tiny");
    let snap = repo_dir.join("snapshots").join(SHA);
    assert!(snap.join("model.safetensors").symlink_metadata().is_err());
    let part = std::fs::read_dir(repo_dir.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "part"))
        .expect("a .part file");
    let have = std::fs::metadata(&part).unwrap().len() as usize;
    assert!(have > 0 && have < size, "{have}");
    let last = events.iter().rev().find_map(|e| match e {
        DownloadEvent::Progress {
            file, bytes_done, ..
        } if file == "model.safetensors" => Some(*bytes_done as usize),
        _ => None,
    });
    // Events are throttled (one per ~1% of the file), so the last may trail the bytes on disk.
    assert!(
        last.is_some_and(|n| n > 0 && n <= have),
        "{last:?} vs {have}"
    );
    assert!(
        msg.contains(&format!("interrupted after {have} of")),
        "{msg}"
    );

    // Healthy server: the transfer resumes from the bytes already there.
    let good = FakeHub::start(vec![stories("org/tiny")], None);
    let (r, events) = run(&hub, &opts(&good.endpoint(), cache.path()), None);
    let dir = r.unwrap();
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        original("model.safetensors")
    );
    let ranges: Vec<_> = resolve_requests(&good, "model.safetensors")
        .into_iter()
        .filter_map(|r| r.range)
        .collect();
    assert!(ranges.contains(&format!("bytes={have}-")), "{ranges:?}");
    check_events(&events, "model.safetensors", size as u64);
    // The files finished before the interruption were not fetched again.
    assert!(resolve_requests(&good, "config.json").is_empty());
    assert!(!part.exists());
}

#[test]
fn a_whole_part_left_by_a_killed_process_is_fetched_again_not_refused_forever() {
    // Killed between writing all of `blobs/<etag>.part` and renaming it: hf-hub resumes at
    // its end, which the hub refuses (416) — on every later run, unless the `.part` goes.
    let cache = tempfile::tempdir().unwrap();
    let hub = hub_ref("org/tiny");
    let blobs = cache.path().join("models--org--tiny").join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let body = original("config.json");
    std::fs::write(blobs.join(format!("{}.part", etag(&body))), &body).unwrap();
    let good = FakeHub::start(vec![stories("org/tiny")], None);
    let (r, _) = run(&hub, &opts(&good.endpoint(), cache.path()), None);
    let dir = r.unwrap();
    assert_eq!(std::fs::read(dir.join("config.json")).unwrap(), body);
    let ranges: Vec<_> = resolve_requests(&good, "config.json")
        .into_iter()
        .filter_map(|r| r.range)
        .collect();
    assert!(
        ranges.contains(&format!("bytes={}-", body.len())),
        "the refused resume was asked for: {ranges:?}"
    );
    let parts = std::fs::read_dir(&blobs)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "part")
        })
        .count();
    assert_eq!(parts, 0);
}

#[test]
fn a_download_that_does_not_match_the_hubs_sha256_is_removed() {
    let mut repo = stories("org/tiny");
    repo.corrupt = Some("model.safetensors".into());
    let server = FakeHub::start(vec![repo], None);
    let cache = tempfile::tempdir().unwrap();
    let (r, _) = run(
        &hub_ref("org/tiny"),
        &opts(&server.endpoint(), cache.path()),
        None,
    );
    let msg = hub_message(r);
    assert!(
        msg.contains("model.safetensors") && msg.contains("sha256"),
        "{msg}"
    );
    let repo_dir = cache.path().join("models--org--tiny");
    let snapshot = repo_dir.join("snapshots").join(SHA);
    assert!(!snapshot.join("model.safetensors").exists());
    let tag = etag(&original("model.safetensors"));
    assert!(
        !repo_dir.join("blobs").join(tag).exists(),
        "the bad blob stayed"
    );
}

#[test]
fn files_already_in_the_cache_are_not_requested() {
    // As Python may leave them: plain files in the snapshot, no refs/main yet.
    let cache = tempfile::tempdir().unwrap();
    let snap = cache.path().join("models--org--tiny/snapshots").join(SHA);
    std::fs::create_dir_all(&snap).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(Path::new(MODEL_DIR).join(f), snap.join(f)).unwrap();
    }
    let server = FakeHub::start(vec![stories("org/tiny")], None);
    let (r, events) = run(
        &hub_ref("org/tiny"),
        &opts(&server.endpoint(), cache.path()),
        None,
    );
    assert_eq!(r.unwrap(), snap);
    for f in ["config.json", "model.safetensors"] {
        assert!(resolve_requests(&server, f).is_empty(), "{f}");
        assert!(events.contains(&DownloadEvent::Cached { file: f.into() }));
    }
    assert_eq!(resolve_requests(&server, "tokenizer.json").len(), 2); // metadata + body
    let refs = cache.path().join("models--org--tiny/refs/main");
    assert_eq!(std::fs::read_to_string(refs).unwrap(), SHA);
}

#[test]
fn cancel_stops_before_the_next_file() {
    let server = FakeHub::start(vec![stories("org/tiny")], None);
    let cache = tempfile::tempdir().unwrap();
    let o = opts(&server.endpoint(), cache.path());
    let cancel = AtomicBool::new(true);
    assert!(matches!(
        run(&hub_ref("org/tiny"), &o, Some(&cancel)).0,
        Err(Error::Cancelled)
    ));
    assert!(server.requests().is_empty());

    let cancel = AtomicBool::new(false);
    let mut events = Vec::new();
    let r = download_model(
        &hub_ref("org/tiny"),
        &o,
        &mut |e| {
            if matches!(&e, DownloadEvent::Done { file } if file == "config.json") {
                cancel.store(true, Ordering::Relaxed);
            }
            events.push(e);
        },
        Some(&cancel),
    );
    assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
    let snap = cache.path().join("models--org--tiny/snapshots").join(SHA);
    assert!(snap.join("config.json").is_file());
    assert!(!snap.join("tokenizer.json").exists());
    assert!(resolve_requests(&server, "tokenizer.json").is_empty());
}

#[test]
fn parses_repo_references() {
    let r = HubRef::parse("org/name").unwrap();
    assert_eq!((r.repo.as_str(), r.revision.as_str()), ("org/name", "main"));
    let r = HubRef::parse("Qwen/Qwen2.5-0.5B-Instruct@v1.0").unwrap();
    assert_eq!(
        (r.repo.as_str(), r.revision.as_str()),
        ("Qwen/Qwen2.5-0.5B-Instruct", "v1.0")
    );
    let r = HubRef::parse("a_b/c@refs/pr/1").unwrap();
    assert_eq!(r.revision, "refs/pr/1");
    assert_eq!(HubRef::parse(&format!("o/n@{SHA}")).unwrap().revision, SHA);
    for bad in [
        "",
        "gpt2",
        "/abs/path",
        "./org/name",
        "org/",
        "/name",
        "a/b/c",
        "org/name@",
        "org/name@../x",
        "org/name@a//b",
        "https://huggingface.co/org/name",
        "org name/x",
        "org/-name",
        "org/name.",
        "org/na--me",
        "org/na..me",
        "C:\\models\\x",
        "org/na me",
        "~/models",
        "org/name@a b",
    ] {
        assert!(HubRef::parse(bad).is_none(), "{bad:?}");
    }
}
