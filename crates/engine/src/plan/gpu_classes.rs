//! Common GPU classes and the smallest one a training run fits on: what the planner names when
//! a configuration does not fit this machine ("fits a 24 GB L4 / RTX 4090: export it to run
//! there", `scaleout`).
//!
//! Capacities are the totals `nvidia-smi` reports for each card (MiB). Not all of it is usable
//! for tensors: the CUDA context, the allocator's caching and fragmentation take a share, so a
//! run "fits" when its peak is at most [`usable_bytes`] — the total less
//! [`RESERVED_FRACTION`] and [`RESERVED_BYTES`]. The estimate this is compared with is the
//! planner's peak for a run on the device (`Estimate::device_bytes`, or `peak_bytes`); it is a
//! pure function of numbers and does not look at hardware.

use serde::Serialize;

/// One GPU model as people rent or buy it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct GpuClass {
    pub name: &'static str,
    /// Total memory as `nvidia-smi` reports it, in MiB.
    pub memory_mib: u64,
    /// bf16 arithmetic (Ampere and newer); without it engines train in fp16.
    pub bf16: bool,
    /// Where it is typically found.
    pub typical: &'static str,
}

const MIB: u64 = 1 << 20;

/// Memory kept for the CUDA context and allocator overhead: a fixed part…
pub const RESERVED_BYTES: u64 = 768 * MIB;
/// …and a share of the card (caching allocator slack, fragmentation).
pub const RESERVED_FRACTION: f64 = 0.05;

/// Common classes, smallest first.
pub const GPU_CLASSES: [GpuClass; 11] = [
    GpuClass {
        name: "T4 16 GB",
        memory_mib: 15_360,
        bf16: false,
        typical: "free notebooks, cheapest cloud instances",
    },
    GpuClass {
        name: "A10G 24 GB",
        memory_mib: 23_028,
        bf16: true,
        typical: "AWS g5",
    },
    GpuClass {
        name: "L4 24 GB",
        memory_mib: 23_034,
        bf16: true,
        typical: "Google Cloud g2, Colab",
    },
    GpuClass {
        name: "RTX 4090 24 GB",
        memory_mib: 24_564,
        bf16: true,
        typical: "workstations, community clouds",
    },
    GpuClass {
        name: "RTX 5090 32 GB",
        memory_mib: 32_607,
        bf16: true,
        typical: "workstations, community clouds",
    },
    GpuClass {
        name: "A100 40 GB",
        memory_mib: 40_960,
        bf16: true,
        typical: "cloud, university clusters",
    },
    GpuClass {
        name: "L40S 48 GB",
        memory_mib: 46_068,
        bf16: true,
        typical: "cloud",
    },
    GpuClass {
        name: "RTX 6000 Ada 48 GB",
        memory_mib: 49_140,
        bf16: true,
        typical: "workstations",
    },
    GpuClass {
        name: "A100 80 GB",
        memory_mib: 81_920,
        bf16: true,
        typical: "cloud, clusters",
    },
    GpuClass {
        name: "H100 80 GB",
        memory_mib: 81_559,
        bf16: true,
        typical: "cloud, clusters",
    },
    GpuClass {
        name: "H200 141 GB",
        memory_mib: 143_771,
        bf16: true,
        typical: "cloud, clusters",
    },
];

/// Bytes of `class` a training run can use.
pub fn usable_bytes(class: &GpuClass) -> u64 {
    let total = class.memory_mib * MIB;
    let reserved = RESERVED_BYTES + (total as f64 * RESERVED_FRACTION) as u64;
    total.saturating_sub(reserved)
}

/// Every class a run with this peak fits on, smallest usable memory first.
pub fn fitting_classes(peak_bytes: u64) -> Vec<&'static GpuClass> {
    let mut v: Vec<&GpuClass> = GPU_CLASSES
        .iter()
        .filter(|c| usable_bytes(c) >= peak_bytes)
        .collect();
    v.sort_by_key(|c| usable_bytes(c));
    v
}

/// The smallest class a run with this peak fits on; `None` when it needs more than one GPU of
/// the largest class (shard it: the export's ZeRO-3 / FSDP launch files).
pub fn smallest_fitting_class(peak_bytes: u64) -> Option<&'static GpuClass> {
    fitting_classes(peak_bytes).into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn names_the_smallest_class_with_room() {
        // 10 GiB fits a T4 (15 GiB less 0.75 GiB and 5 %).
        assert_eq!(smallest_fitting_class(10 * GIB).unwrap().name, "T4 16 GB");
        // 15 GiB does not fit a T4 any more: the next class up is a 24 GB card.
        let c = smallest_fitting_class(15 * GIB).unwrap();
        assert_eq!(c.memory_mib, 23_028);
        // 28 GiB needs the 32 GB card; 70 GiB an 80 GB one; 200 GiB none.
        assert_eq!(
            smallest_fitting_class(28 * GIB).unwrap().name,
            "RTX 5090 32 GB"
        );
        assert!(smallest_fitting_class(70 * GIB).unwrap().memory_mib >= 81_000);
        assert!(smallest_fitting_class(200 * GIB).is_none());
        // The boundary is inclusive and exact.
        let l4 = &GPU_CLASSES[2];
        let b = usable_bytes(l4);
        assert!(fitting_classes(b).iter().any(|c| c.name == l4.name));
        assert!(!fitting_classes(b + 1).iter().any(|c| c.name == l4.name));
        // Sorted by usable memory.
        let all = fitting_classes(0);
        assert_eq!(all.len(), GPU_CLASSES.len());
        assert!(all
            .windows(2)
            .all(|w| usable_bytes(w[0]) <= usable_bytes(w[1])));
    }
}
