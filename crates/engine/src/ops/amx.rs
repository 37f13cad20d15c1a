//! Intel AMX (Advanced Matrix Extensions) bf16 tiles: the one kernel behind
//! [`super::bf16_gemm`] on CPUs that have them (Sapphire Rapids and newer Xeons).
//!
//! A `tdpbf16ps` multiplies a 16×32 bf16 tile by a 32×16 bf16 tile (stored as 16 rows of
//! 16 pairs, "VNNI" layout) into a 16×16 f32 tile: 16 K multiply-adds in one instruction, about
//! sixteen times what AVX-512 FMAs do per cycle in f32. Rust has no stable AMX intrinsics, so
//! the instructions are written as inline assembly; the tile registers are never touched by
//! compiled code, so their contents persist between `asm!` blocks on one thread.
//!
//! Linux hands out the 8 KiB tile state only to processes that ask (`arch_prctl`
//! `ARCH_REQ_XCOMP_PERM`); [`available`] asks once and says whether the kernel agreed.

/// Output block of one [`block_32x32`] call: 32 rows × 32 columns of f32.
pub(crate) const BLOCK: usize = 32;
/// K consumed per tile step (bf16 elements: 16 pairs).
pub(crate) const K_STEP: usize = 32;

/// Whether this CPU has AMX-BF16 and the OS granted this process the tile state. Checked once.
pub(crate) fn available() -> bool {
    static READY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *READY.get_or_init(imp::request)
}

/// Loads the tile configuration on this thread: all eight tiles 16 rows × 64 bytes (tiles 0–3
/// accumulate C, 4–5 hold A, 6–7 hold B). Pair with [`release`] on the same thread.
///
/// # Safety
/// [`available`] must have returned true.
pub(crate) unsafe fn configure() {
    imp::configure()
}

/// Drops this thread's tile state, so context switches stop saving 8 KiB of it.
///
/// # Safety
/// [`available`] must have returned true.
pub(crate) unsafe fn release() {
    imp::release()
}

/// `c[32×32] = A·B` over `steps` K steps of 32: `a` points at a 32-row bf16 block of A whose
/// rows are `lda_bytes` apart (K contiguous), `b0`/`b1` at the VNNI-packed B for output
/// columns 0–15 and 16–31 (each `steps · 16` rows of 64 bytes, contiguous). `c` is written
/// row-major with rows of 32 (not accumulated).
///
/// # Safety
/// [`configure`] ran on this thread; `a` is readable for 32 rows of `steps · 64` bytes at
/// stride `lda_bytes`, and `b0`, `b1` for `steps · 1024` bytes each.
pub(crate) unsafe fn block_32x32(
    a: *const u16,
    lda_bytes: usize,
    b0: *const u32,
    b1: *const u32,
    steps: usize,
    c: &mut [f32; BLOCK * BLOCK],
) {
    imp::block_32x32(a, lda_bytes, b0, b1, steps, c)
}

#[cfg(target_arch = "x86_64")]
mod imp {
    use super::BLOCK;
    use std::arch::asm;

    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    pub(super) fn request() -> bool {
        // CPUID.(EAX=7, ECX=0):EDX bit 22 = AMX-BF16, bit 24 = AMX-TILE.
        let leaf = std::arch::x86_64::__cpuid_count(7, 0);
        let has = leaf.edx & (1 << 22) != 0 && leaf.edx & (1 << 24) != 0;
        if !has || !cfg!(target_os = "linux") {
            return false;
        }
        const SYS_ARCH_PRCTL: i64 = 158;
        const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
        const XFEATURE_XTILEDATA: i64 = 18;
        let ret: i64;
        // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) only changes this process's
        // permitted xsave features; the syscall clobbers rcx and r11 and nothing else.
        unsafe {
            asm!(
                "syscall",
                inlateout("rax") SYS_ARCH_PRCTL => ret,
                in("rdi") ARCH_REQ_XCOMP_PERM,
                in("rsi") XFEATURE_XTILEDATA,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        ret == 0
    }

    pub(super) unsafe fn configure() {
        let mut cfg = TileConfig([0; 64]);
        cfg.0[0] = 1; // palette 1
        for t in 0..8 {
            cfg.0[16 + 2 * t] = 64; // bytes per row (u16 little-endian; high byte 0)
            cfg.0[48 + t] = 16; // rows
        }
        asm!("ldtilecfg [{0}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
    }

    pub(super) unsafe fn release() {
        asm!("tilerelease", options(nostack, nomem));
    }

    pub(super) unsafe fn block_32x32(
        a: *const u16,
        lda_bytes: usize,
        b0: *const u32,
        b1: *const u32,
        steps: usize,
        c: &mut [f32; BLOCK * BLOCK],
    ) {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
        let a_lower = a.add(16 * lda_bytes / 2);
        for s in 0..steps {
            asm!(
                "tileloadd tmm4, [{a0} + {sa}*1]",
                "tileloadd tmm5, [{a1} + {sa}*1]",
                "tileloadd tmm6, [{b0} + {sb}*1]",
                "tileloadd tmm7, [{b1} + {sb}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a.add(s * 32),
                a1 = in(reg) a_lower.add(s * 32),
                b0 = in(reg) b0.add(s * 256),
                b1 = in(reg) b1.add(s * 256),
                sa = in(reg) lda_bytes,
                sb = in(reg) 64usize,
                options(nostack, readonly)
            );
        }
        let p = c.as_mut_ptr();
        asm!(
            "tilestored [{c0} + {s}*1], tmm0",
            "tilestored [{c1} + {s}*1], tmm1",
            "tilestored [{c2} + {s}*1], tmm2",
            "tilestored [{c3} + {s}*1], tmm3",
            c0 = in(reg) p,
            c1 = in(reg) p.add(16),
            c2 = in(reg) p.add(16 * BLOCK),
            c3 = in(reg) p.add(16 * BLOCK + 16),
            s = in(reg) BLOCK * 4,
            options(nostack)
        );
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod imp {
    use super::BLOCK;
    pub(super) fn request() -> bool {
        false
    }
    pub(super) unsafe fn configure() {}
    pub(super) unsafe fn release() {}
    pub(super) unsafe fn block_32x32(
        _: *const u16,
        _: usize,
        _: *const u32,
        _: *const u32,
        _: usize,
        _: &mut [f32; BLOCK * BLOCK],
    ) {
        unreachable!("AMX is never reported available off x86_64")
    }
}
