//! Opening a model from a `--model` argument, with a download progress bar for hub ids. Which
//! storage its weights are built in is the engine's choice per use (training asks for what its
//! method needs), so this only opens.

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use peft_engine::model::decoder::WeightDtype;
use peft_engine::model::hub::DownloadEvent;
use peft_engine::model::load::{ModelSource, OpenOptions};
use peft_engine::model::loaded::LoadedModel;

/// The model flags shared by every command.
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// A model folder, a .gguf file, a hub id (org/name[@revision]) or `demo` (bundled).
    #[arg(long, short, default_value = "demo")]
    pub model: String,
    /// Store the dense base weights as bf16 (half the memory, slightly different numbers).
    #[arg(long)]
    pub bf16: bool,
}

impl ModelArgs {
    /// Storage of dense weights that `--bf16` asks for.
    pub fn weight_dtype(&self) -> WeightDtype {
        if self.bf16 {
            WeightDtype::Bf16
        } else {
            WeightDtype::F32
        }
    }
}

/// Opens the model (downloading hub models with a progress bar); reads no weights yet.
pub fn open_model(args: &ModelArgs) -> peft_engine::Result<LoadedModel> {
    let source = ModelSource::parse(&args.model)?;
    let bar = ProgressBar::hidden();
    bar.set_style(
        ProgressStyle::with_template("{msg:30} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut on_event = |e: DownloadEvent| match e {
        DownloadEvent::Start { file, total_bytes } => {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.set_message(file);
            bar.set_length(total_bytes);
            bar.set_position(0);
        }
        DownloadEvent::Progress { bytes_done, .. } => bar.set_position(bytes_done),
        DownloadEvent::Done { .. } => bar.finish(),
        DownloadEvent::Cached { .. } => {}
    };
    let open = OpenOptions {
        on_download: Some(&mut on_event),
        ..Default::default()
    };
    LoadedModel::open(&source, open)
}
