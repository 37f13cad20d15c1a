//! What the Train step receives while a run goes (its own module: the app state holds the
//! channel these go to, and the train commands send them).

use peft_engine::train::history::RunRecord;
use peft_engine::train::TrainEvent;
use serde::Serialize;
use ts_rs::TS;

/// What the Train step receives while a run goes.
#[derive(Debug, Clone, Serialize, TS)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TrainUpdate {
    /// An engine event and the run's record as it stands after it.
    Event {
        // Boxed like the record: the events carry the plan, and the enum stays small.
        event: Box<TrainEvent>,
        record: Box<RunRecord>,
    },
    /// The run ended (completed, paused or failed); the record is what the history keeps.
    Finished { record: Box<RunRecord> },
}
