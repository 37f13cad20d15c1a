//! The memory-fit planner: an itemised, pure estimate of a training run's peak memory and
//! speed ([`estimate`]), a recommender that ranks configurations for a machine and a dataset
//! ([`recommend`]), and the short measurement of this machine's throughput the time estimate
//! needs ([`calibrate`]).
//!
//! What this is not: it does not scan hardware (it takes a [`crate::hardware::Hardware`]) and
//! does not train; `peft bench plan` checks its numbers against real runs.

pub mod calibrate;
pub mod devices;
pub mod elsewhere;
pub mod epoch;
pub mod estimate;
pub mod fit;
pub mod gpu_classes;
pub mod machine;
pub mod params;
pub mod recommend;
pub mod request;
pub mod time;
pub mod work;

pub use calibrate::measure_throughput;
pub use estimate::{estimate, estimate_with, Band, Calibration, Estimate, Line};
pub use recommend::{recommend, Candidate, DataStats, RecommendOptions, Recommendation};
pub use request::{ComputeDevice, GgufBase, PlanRequest, Throughput};
pub use time::StepTime;
