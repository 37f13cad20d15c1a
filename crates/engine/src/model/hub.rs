//! Downloading a model from the Hugging Face hub into the standard Hugging Face cache.
//!
//! [`download_model`] fetches the files a model needs — `config.json`, `tokenizer.json`, the
//! optional `tokenizer_config.json` and `generation_config.json`, and `model.safetensors` or
//! `model.safetensors.index.json` plus every shard it names — and returns the snapshot folder
//! `<cache>/models--org--name/snapshots/<commit>/`, which the loader then opens like any local
//! folder. The cache layout is the one Python's `huggingface_hub` uses (content in `blobs/<etag>`,
//! snapshot entries as relative symlinks to it, `refs/<revision>` holding the commit), so files a
//! Python tool downloaded are reused, and ours are reused by it.
//!
//! It is not a loader (see `model::tensors`), not a general hub client (no upload, datasets,
//! `.bin` weights or GGUF repos), and does not speak the Xet transfer protocol.
//!
//! # Network use
//! One `GET /api/models/{repo}/revision/{rev}` gives the commit and the file list. Then, for each
//! file not already in that commit's snapshot, hf-hub sends `GET` with `Range: bytes=0-0` (reads
//! `x-repo-commit`, `etag`/`x-linked-etag` and the size from `Content-Range`) and `GET` with
//! `Range: bytes=<have>-` appending to `blobs/<etag>.part`, renamed into place when complete — so
//! an interrupted download resumes where it stopped. Files are requested at the resolved commit,
//! not the branch, so they all land in one snapshot even if the branch moves meanwhile. When the
//! hub cannot be reached, a complete cached snapshot of the revision is used, as Python does.
//!
//! # Cancellation
//! Checked before the first request and before each file. hf-hub's [`Progress`](hf_hub::api::Progress) trait cannot
//! abort a transfer, and doing the transfer ourselves would need `ureq` as a direct dependency,
//! so a cancel during a file takes effect when that file's transfer ends; its bytes are kept.

mod transfer;

use crate::error::{Error, Result};
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use transfer::{classify, Failure, Fetcher};

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
const REQUIRED: [&str; 2] = ["config.json", "tokenizer.json"];
const OPTIONAL: [&str; 2] = ["tokenizer_config.json", "generation_config.json"];
const SINGLE: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";
/// hf-hub retries a broken transfer from where it stopped, waiting ~0.3–0.8 s between tries.
const RETRIES: usize = 3;

/// A model repository on the hub and the revision (branch, tag or commit) to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRef {
    /// `org/name`.
    pub repo: String,
    /// Branch, tag or commit; `main` unless given.
    pub revision: String,
}

impl HubRef {
    /// Parses `org/name` or `org/name@revision`, with the hub's rules for repo ids: each part is
    /// ASCII letters, digits, `-`, `_`, `.`, does not start or end with `-` or `.`, and has no
    /// `--` or `..`. Returns `None` for anything else (URLs, absolute paths, `a/b/c`).
    ///
    /// A relative path such as `models/llama` is also a plausible repo id: callers that accept
    /// both should look for an existing local folder first.
    pub fn parse(s: &str) -> Option<HubRef> {
        let (repo, revision) = match s.split_once('@') {
            Some((repo, rev)) => (repo, Some(rev)),
            None => (s, None),
        };
        let (org, name) = repo.split_once('/')?;
        if !valid_id_part(org) || !valid_id_part(name) {
            return None;
        }
        let revision = match revision {
            None => "main".to_string(),
            Some(rev) if valid_revision(rev) => rev.to_string(),
            Some(_) => return None,
        };
        Some(HubRef {
            repo: repo.to_string(),
            revision,
        })
    }
}

impl fmt::Display for HubRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.repo, self.revision)
    }
}

fn valid_id_part(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 96
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !p.starts_with(['-', '.'])
        && !p.ends_with(['-', '.'])
        && !p.contains("--")
        && !p.contains("..")
}

fn valid_revision(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 255
        && r.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && is_safe_relative(r)
}

/// A relative path that stays inside the folder it is joined to: a revision (it names a file
/// under `refs/`) or a shard name from an index file written by someone else.
fn is_safe_relative(p: &str) -> bool {
    !p.is_empty()
        && !p.contains('\\')
        && p.split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

/// Where and how to download. `None` fields are resolved from the environment at call time,
/// the way Python's `huggingface_hub` does.
#[derive(Clone, Default)]
pub struct HubOptions {
    /// Hub URL; `None`: `$HF_ENDPOINT`, else `https://huggingface.co`.
    pub endpoint: Option<String>,
    /// Cache root (the folder holding `models--org--name`); `None`: `$HF_HUB_CACHE`, else
    /// `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
    pub cache_dir: Option<PathBuf>,
    /// Access token for private and gated repos; `None`: `$HF_TOKEN`, else the token file that
    /// `huggingface-cli login` writes (`$HF_HOME/token`).
    pub token: Option<String>,
    /// Use the cache only, never the network; also on when `HF_HUB_OFFLINE=1`.
    pub offline: bool,
}

impl fmt::Debug for HubOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a secret: say whether there is one, never what it is.
        f.debug_struct("HubOptions")
            .field("endpoint", &self.endpoint)
            .field("cache_dir", &self.cache_dir)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("offline", &self.offline)
            .finish()
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn hf_home() -> Option<PathBuf> {
    if let Some(home) = env("HF_HOME") {
        return Some(home.into());
    }
    let cache = match env("XDG_CACHE_HOME") {
        Some(xdg) => PathBuf::from(xdg),
        None => PathBuf::from(env("HOME").or_else(|| env("USERPROFILE"))?).join(".cache"),
    };
    Some(cache.join("huggingface"))
}

impl HubOptions {
    /// The cache root these options use, `None` when neither it nor a home folder is known.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        self.cache_dir
            .clone()
            .or_else(|| env("HF_HUB_CACHE").map(PathBuf::from))
            .or_else(|| env("HUGGINGFACE_HUB_CACHE").map(PathBuf::from))
            .or_else(|| hf_home().map(|h| h.join("hub")))
    }

    fn endpoint(&self) -> String {
        let e = self
            .endpoint
            .clone()
            .or_else(|| env("HF_ENDPOINT"))
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        e.trim_end_matches('/').to_string()
    }

    fn token(&self) -> Option<String> {
        self.token
            .clone()
            .or_else(|| env("HF_TOKEN"))
            .or_else(|| env("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| {
                let path = env("HF_TOKEN_PATH")
                    .map(PathBuf::from)
                    .or_else(|| hf_home().map(|h| h.join("token")))?;
                let t = std::fs::read_to_string(path).ok()?;
                Some(t.trim().to_string()).filter(|t| !t.is_empty())
            })
    }

    fn is_offline(&self) -> bool {
        self.offline
            || env("HF_HUB_OFFLINE").is_some_and(|v| {
                matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
            })
    }
}

/// What [`download_model`] reports, in order, for each file it handles.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DownloadEvent {
    /// A transfer begins; `total_bytes` is the whole file, even when resuming.
    Start {
        file: String,
        #[cfg_attr(feature = "ts", ts(type = "number"))]
        total_bytes: u64,
    },
    /// Bytes of the file now on disk; never decreases, and the last one equals `total_bytes`.
    Progress {
        file: String,
        #[cfg_attr(feature = "ts", ts(type = "number"))]
        bytes_done: u64,
        #[cfg_attr(feature = "ts", ts(type = "number"))]
        total_bytes: u64,
    },
    /// The file is complete in the snapshot.
    Done { file: String },
    /// The file was already in the cache for this revision; no network was used for it.
    Cached { file: String },
}

/// Downloads (or finds in the cache) the files of `hub`'s model and returns the snapshot folder.
///
/// `on_event` sees each file's [`DownloadEvent`]s. `cancel`, when set, stops the download
/// before the next file (see the module docs on why not mid-file).
///
/// # Errors
/// [`Error::Hub`] naming the repository and what went wrong: repository or revision not found
/// (or private), a required file or shard missing, the hub unreachable with no complete cached
/// copy, a transfer interrupted (run again to resume), offline with files missing from the
/// cache. [`Error::Cancelled`] when `cancel` was set; [`Error::Io`] for a
/// cache that cannot be written, [`Error::Json`]/[`Error::Config`] for an index file that does
/// not parse or names no usable shards.
pub fn download_model(
    hub: &HubRef,
    opts: &HubOptions,
    on_event: &mut dyn FnMut(DownloadEvent),
    cancel: Option<&AtomicBool>,
) -> Result<PathBuf> {
    let cache_dir = opts.cache_dir().ok_or_else(|| {
        hub_err(
            hub,
            "no cache folder: set HF_HOME or HF_HUB_CACHE".to_string(),
        )
    })?;
    let cache_dir = std::path::absolute(&cache_dir).map_err(|e| Error::io(&cache_dir, e))?;
    let repo_dir = cache_dir.join(Repo::model(hub.repo.clone()).folder_name());
    let endpoint = opts.endpoint();

    if opts.is_offline() {
        return from_cache(hub, &repo_dir, on_event).map_err(|m| {
            hub_err(
                hub,
                format!("working offline and {m}; run once with network access to download it"),
            )
        });
    }
    check_cancel(cancel)?;

    let api = ApiBuilder::from_cache(Cache::new(cache_dir.clone()))
        .with_endpoint(endpoint.clone())
        .with_token(opts.token())
        .with_progress(false)
        .with_retries(RETRIES)
        .with_user_agent("peft-studio", env!("CARGO_PKG_VERSION"))
        .build()
        .map_err(|e| hub_err(hub, format!("cannot set up the HTTP client: {e}")))?;
    let info = match api
        .repo(Repo::with_revision(
            hub.repo.clone(),
            RepoType::Model,
            hub.revision.clone(),
        ))
        .info()
    {
        Ok(info) => info,
        Err(e) => {
            let failure = classify(e);
            if let Failure::Unreachable(cause) = &failure {
                // Like Python: no network, but a complete cached copy is as good as it gets.
                return from_cache(hub, &repo_dir, on_event).map_err(|_| {
                    hub_err(
                        hub,
                        format!(
                            "cannot reach {endpoint}: {cause} — use a local folder, or set \
                             HF_HUB_OFFLINE=1 to use the cache"
                        ),
                    )
                });
            }
            return Err(hub_err(hub, info_failure(hub, &endpoint, failure)));
        }
    };
    if info.sha.is_empty() || !info.sha.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(hub_err(
            hub,
            format!("{endpoint} answered an unusable commit id `{}`", info.sha),
        ));
    }
    let siblings: HashSet<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    let mut files: Vec<&str> = Vec::new();
    for f in REQUIRED {
        if !siblings.contains(f) {
            return Err(hub_err(hub, missing_file(hub, f)));
        }
        files.push(f);
    }
    files.extend(OPTIONAL.iter().filter(|f| siblings.contains(**f)));
    let weights = if siblings.contains(SINGLE) {
        SINGLE
    } else if siblings.contains(INDEX) {
        INDEX
    } else {
        return Err(hub_err(hub, no_weights(hub, &siblings)));
    };
    files.push(weights);

    let snapshot = repo_dir.join("snapshots").join(&info.sha);
    let fetcher = Fetcher {
        hub,
        endpoint: &endpoint,
        repo: api.repo(Repo::with_revision(
            hub.repo.clone(),
            RepoType::Model,
            info.sha.clone(),
        )),
        snapshot: &snapshot,
        sha: &info.sha,
    };
    // hf-hub writes `refs/<commit>` because we ask for files by commit; Python never does.
    let stray_ref = repo_dir.join("refs").join(&info.sha);
    let stray_existed = stray_ref.exists();
    let result = (|| -> Result<()> {
        for f in &files {
            fetcher.fetch(f, on_event, cancel)?;
        }
        if weights == INDEX {
            for shard in shard_names(&snapshot.join(INDEX))? {
                if !siblings.contains(shard.as_str()) {
                    return Err(hub_err(
                        hub,
                        format!("{INDEX} names {shard}, which {} does not have", hub),
                    ));
                }
                fetcher.fetch(&shard, on_event, cancel)?;
            }
        }
        Ok(())
    })();
    if !stray_existed {
        let _ = std::fs::remove_file(&stray_ref);
    }
    result?;
    write_ref(&repo_dir, &hub.revision, &info.sha)?;
    Ok(snapshot)
}

fn hub_err(hub: &HubRef, message: String) -> Error {
    Error::Hub {
        repo: hub.repo.clone(),
        message,
    }
}

fn check_cancel(cancel: Option<&AtomicBool>) -> Result<()> {
    match cancel {
        Some(c) if c.load(Ordering::Relaxed) => Err(Error::Cancelled),
        _ => Ok(()),
    }
}

fn missing_file(hub: &HubRef, file: &str) -> String {
    format!("{hub} has no {file}, which every model needs")
}

fn no_weights(hub: &HubRef, siblings: &HashSet<&str>) -> String {
    let torch = siblings
        .iter()
        .any(|f| f.ends_with(".bin") || f.ends_with(".pt"));
    let hint = if torch {
        " (it has only PyTorch .bin weights; use a safetensors copy of the model)"
    } else {
        ""
    };
    format!("{hub} has neither {SINGLE} nor {INDEX}{hint}")
}

/// `refs/<revision>` → commit, so the cache (and Python) can find this snapshot by branch name.
fn write_ref(repo_dir: &Path, revision: &str, sha: &str) -> Result<()> {
    if revision == sha {
        return Ok(());
    }
    let path = repo_dir.join("refs").join(revision);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    std::fs::write(&path, sha).map_err(|e| Error::io(&path, e))
}

/// The shard files named by a `model.safetensors.index.json`, sorted and deduplicated.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Json {
        path: index.to_path_buf(),
        message: e.to_string(),
    })?;
    let bad = |message: String| Error::Config {
        file: index.display().to_string(),
        field: "weight_map".into(),
        message,
    };
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("missing or not an object".into()))?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|f| f.as_str().map(String::from))
        .collect();
    files.sort();
    files.dedup();
    if files.is_empty() {
        return Err(bad("names no shard files".into()));
    }
    if let Some(f) = files.iter().find(|f| !is_safe_relative(f)) {
        return Err(bad(format!("`{f}` is not a file inside the repository")));
    }
    Ok(files)
}

/// Resolves the revision from the cache alone: a complete snapshot, or why there is none.
fn from_cache(
    hub: &HubRef,
    repo_dir: &Path,
    on_event: &mut dyn FnMut(DownloadEvent),
) -> std::result::Result<PathBuf, String> {
    let snapshots = repo_dir.join("snapshots");
    let commit = if snapshots.join(&hub.revision).is_dir() {
        hub.revision.clone()
    } else {
        let r = repo_dir.join("refs").join(&hub.revision);
        std::fs::read_to_string(&r)
            .map(|s| s.trim().to_string())
            .map_err(|_| format!("{hub} is not in the cache {}", repo_dir.display()))?
    };
    if !is_safe_relative(&commit) {
        return Err(format!("the cache's ref for {hub} is unusable"));
    }
    let snap = snapshots.join(&commit);
    let missing = |f: &str| format!("{f} of {hub} is not in the cache {}", snap.display());
    let mut have: Vec<String> = Vec::new();
    for f in REQUIRED {
        if !snap.join(f).is_file() {
            return Err(missing(f));
        }
        have.push(f.to_string());
    }
    have.extend(
        OPTIONAL
            .iter()
            .filter(|f| snap.join(f).is_file())
            .map(|f| f.to_string()),
    );
    if snap.join(SINGLE).is_file() {
        have.push(SINGLE.to_string());
    } else if snap.join(INDEX).is_file() {
        have.push(INDEX.to_string());
        for shard in shard_names(&snap.join(INDEX)).map_err(|e| e.to_string())? {
            if !snap.join(&shard).is_file() {
                return Err(missing(&shard));
            }
            have.push(shard);
        }
    } else {
        return Err(missing(SINGLE));
    }
    for file in have {
        on_event(DownloadEvent::Cached { file });
    }
    Ok(snap)
}

fn info_failure(hub: &HubRef, endpoint: &str, failure: Failure) -> String {
    match failure {
        Failure::Status { hub_code, .. } if hub_code.as_deref() == Some("RevisionNotFound") => {
            format!("revision `{}` not found in {}", hub.revision, hub.repo)
        }
        Failure::Status {
            code: 401 | 403 | 404,
            ..
        } => {
            format!(
                "repository {} not found (or private: set HF_TOKEN)",
                hub.repo
            )
        }
        Failure::Status { code, .. } => format!(
            "{endpoint} answered HTTP {code} for the file list of {hub}{}",
            if code == 429 {
                " (rate limited: wait and retry)"
            } else {
                ""
            }
        ),
        Failure::Io(e) => format!("{endpoint} sent an unreadable file list for {hub}: {e}"),
        Failure::Unreachable(cause) | Failure::Other(cause) => {
            format!("cannot get the file list of {hub} from {endpoint}: {cause}")
        }
    }
}
