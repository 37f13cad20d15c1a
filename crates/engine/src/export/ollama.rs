//! Folders for local runtimes: an Ollama model folder (merged GGUF + `Modelfile` + `README.md`
//! with the exact `ollama create` command) and LM Studio's `publisher/model/file.gguf` layout.
//!
//! The Modelfile always carries an explicit `TEMPLATE` (`export::ollama_template`, proved equal
//! to the Jinja template by rendering), a `SYSTEM` line when the template has a default system
//! prompt, `PARAMETER stop` for every token that ends the model's turn (Ollama would otherwise
//! take stops only from a built-in template it matched, or none), and our chat step's sampling
//! defaults, so that `ollama run` chats like the app's Chat step. It uses `FROM ./file.gguf`, not
//! `ADAPTER`: Ollama converts safetensors adapters only for some architectures, and newer
//! versions are reported to refuse `ADAPTER` altogether.
//!
//! LM Studio reads the chat template from the GGUF metadata; a GGUF placed directly in its
//! models folder is ignored, hence the two-level layout.

use crate::error::{Error, Result};
use crate::export::ollama_template::OllamaTemplate;
use crate::fsutil::write_atomic;
use crate::infer::generate::GenerateOptions;
use std::path::{Path, PathBuf};

/// A name safe for Ollama tags and folder names: lowercase ASCII letters, digits, `-`, `_`,
/// `.`; anything else becomes `-`.
pub fn safe_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let s = s.trim_matches(|c| c == '-' || c == '.').to_string();
    if s.is_empty() {
        "model".into()
    } else {
        s
    }
}

fn quoted(what: &str, s: &str) -> Result<String> {
    if s.contains("\"\"\"") {
        return Err(Error::invalid(
            "Modelfile",
            format!("the {what} contains \"\"\", which a Modelfile cannot quote"),
        ));
    }
    Ok(format!("\"\"\"{s}\"\"\""))
}

/// The Modelfile text for a GGUF file named `gguf_file` beside it.
///
/// # Errors
/// [`Error::Invalid`] for a template, system prompt or stop string a Modelfile cannot quote.
pub fn modelfile(
    gguf_file: &str,
    t: &OllamaTemplate,
    stops: &[String],
    sampling: &GenerateOptions,
    context: usize,
) -> Result<String> {
    let mut m = format!(
        "# Written by PEFT Studio. Chat template family: {}.\nFROM ./{gguf_file}\n\nTEMPLATE {}\n",
        t.family,
        quoted("template", &t.template)?
    );
    if let Some(sys) = &t.system {
        m.push_str(&format!("\nSYSTEM {}\n", quoted("system prompt", sys)?));
    }
    m.push('\n');
    for stop in stops {
        if stop.contains('"') || stop.contains('\n') {
            return Err(Error::invalid(
                "Modelfile",
                format!("stop string {stop:?} cannot be written as a PARAMETER"),
            ));
        }
        m.push_str(&format!("PARAMETER stop \"{stop}\"\n"));
    }
    m.push_str(&format!(
        "PARAMETER temperature {}\nPARAMETER top_k {}\nPARAMETER top_p {}\nPARAMETER repeat_penalty {}\nPARAMETER num_ctx {}\n",
        sampling.temperature, sampling.top_k, sampling.top_p, sampling.repeat_penalty, context
    ));
    Ok(m)
}

/// The command that imports the folder into Ollama.
pub fn create_command(dir: &Path, name: &str) -> String {
    format!(
        "ollama create {name} -f {}",
        dir.join("Modelfile").display()
    )
}

/// Writes `Modelfile` and `README.md` into `dir` (which holds `gguf_file`); returns the
/// `ollama create` command.
///
/// # Errors
/// As [`modelfile`]; I/O errors naming the file.
pub fn write_ollama_files(
    dir: &Path,
    name: &str,
    gguf_file: &str,
    t: &OllamaTemplate,
    stops: &[String],
    context: usize,
) -> Result<String> {
    let text = modelfile(gguf_file, t, stops, &GenerateOptions::default(), context)?;
    write_atomic(&dir.join("Modelfile"), text.as_bytes())?;
    let cmd = create_command(dir, name);
    let readme = format!(
        "# {name} for Ollama\n\nImport it (once):\n\n    {cmd}\n\nthen chat:\n\n    ollama run {name}\n\n\
         `Modelfile` sets the chat template (family `{}`), the stop tokens ({}) and the sampling\n\
         defaults of PEFT Studio's chat. `{gguf_file}` is the merged model; llama.cpp and LM Studio\n\
         load it directly too.\n",
        t.family,
        stops.join(", ")
    );
    write_atomic(&dir.join("README.md"), readme.as_bytes())?;
    Ok(cmd)
}

/// Where LM Studio expects a model: `root/publisher/model/file`.
pub fn lmstudio_path(root: &Path, publisher: &str, model: &str, file: &str) -> PathBuf {
    root.join(safe_name(publisher))
        .join(safe_name(model))
        .join(file)
}
