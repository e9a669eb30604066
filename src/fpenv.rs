//! Flush-to-zero on every thread that computes.
//!
//! Arithmetic on subnormal floats takes a microcode assist on Intel cores (tens to hundreds of
//! cycles per operation); one masked attention probability of ~1e-39 in a matmul operand was
//! enough to make a training step three times slower there. The kernels avoid producing
//! subnormals (see `model::kernels`), and as a second line every compute thread runs with
//! subnormal inputs and results read as zero: FTZ and DAZ in x86-64's MXCSR, FZ in aarch64's
//! FPCR. Neither changes any normal result, and the rounding mode is untouched.
//!
//! The threads that compute: the caller's, rayon's global pool (our kernels, and gemm's
//! `Parallelism::Rayon`), candle's private rayon pool (`Device::with_context`) and candle's
//! barrier pool (its element-wise ops). New threads inherit the creating thread's floating-point
//! environment (POSIX `pthread_create`), so setting the main thread first covers pools started
//! later; the global pool also sets it in its start handler, and pools already running are
//! reached by running the setter on each of their workers.

/// The pools [`flush_subnormals_everywhere`] reaches, by name, for reports and tests.
pub const POOLS: [&str; 4] = ["caller", "rayon-global", "candle-rayon", "candle-barrier"];

/// Makes this thread treat subnormal inputs and results as zero. Returns false on an
/// architecture where that is not implemented (the kernels still avoid subnormals there).
pub fn flush_subnormals_on_this_thread() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // FTZ (bit 15): subnormal results become zero; DAZ (bit 6): subnormal inputs read as zero.
        const FTZ_DAZ: u32 = (1 << 15) | (1 << 6);
        let csr = mxcsr();
        if csr & FTZ_DAZ != FTZ_DAZ {
            let new = csr | FTZ_DAZ;
            // SAFETY: ldmxcsr with the current value plus two flags that no Rust code relies
            // on being clear (exception masks and rounding mode are kept).
            unsafe {
                std::arch::asm!("ldmxcsr [{0}]", in(reg) &new, options(nostack, readonly));
            }
        }
        true
    }
    #[cfg(target_arch = "aarch64")]
    {
        const FZ: u64 = 1 << 24;
        let fpcr = fpcr();
        if fpcr & FZ == 0 {
            // SAFETY: sets FPCR.FZ only; rounding mode and trap bits are kept.
            unsafe {
                std::arch::asm!("msr fpcr, {0}", in(reg) fpcr | FZ, options(nomem, nostack));
            }
        }
        true
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// Whether this thread flushes subnormals (both FTZ and DAZ on x86-64).
pub fn subnormals_flushed_on_this_thread() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        mxcsr() & ((1 << 15) | (1 << 6)) == (1 << 15) | (1 << 6)
    }
    #[cfg(target_arch = "aarch64")]
    {
        fpcr() & (1 << 24) != 0
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
fn mxcsr() -> u32 {
    let mut csr = 0u32;
    // SAFETY: stmxcsr writes the 4-byte control register to the given address.
    unsafe {
        std::arch::asm!("stmxcsr [{0}]", in(reg) &mut csr, options(nostack));
    }
    csr
}

#[cfg(target_arch = "aarch64")]
fn fpcr() -> u64 {
    let v: u64;
    // SAFETY: reading FPCR has no side effect.
    unsafe {
        std::arch::asm!("mrs {0}, fpcr", out(reg) v, options(nomem, nostack));
    }
    v
}

/// Sets flush-to-zero on the caller and on every worker of the pools that compute, starting
/// the pools that are not running yet. Call it first thing in `main`, before any other thread
/// exists (later calls are cheap and harmless).
pub fn flush_subnormals_everywhere() {
    flush_subnormals_on_this_thread();
    // Fails when the global pool already runs (a library user built it): reached below instead.
    let _ = rayon::ThreadPoolBuilder::new()
        .start_handler(|_| {
            flush_subnormals_on_this_thread();
        })
        .build_global();
    on_every_worker(|| {
        flush_subnormals_on_this_thread();
    });
}

/// Runs `f` on every worker of the global rayon pool, candle's rayon pool and candle's barrier
/// pool (starting the last two if needed); returns, per pool of [`POOLS`] after the caller,
/// whether `f` returned true on all its workers.
fn on_every_worker(f: impl Fn() + Sync) -> [bool; 3] {
    let all = |v: Vec<bool>| v.into_iter().all(|x| x);
    let g = || {
        f();
        subnormals_flushed_on_this_thread()
    };
    let global = all(rayon::broadcast(|_| g()));
    let candle_rayon = all(candle_core::utils::with_threadpool(|| {
        rayon::broadcast(|_| g())
    }));
    // The barrier pool runs the closure once on each worker and once on the caller.
    let pool = candle_core::utils::barrier_pool();
    let flags = std::sync::Mutex::new(Vec::new());
    pool.execute(|_| {
        let ok = g();
        flags.lock().expect("flags").push(ok);
    });
    let flags = flags.into_inner().expect("flags");
    let barrier = flags.len() == pool.n_workers() + 1 && all(flags);
    [global, candle_rayon, barrier]
}

/// Per pool of [`POOLS`]: whether every one of its threads flushes subnormals (without
/// changing anything). For the tests and `socratune bench`'s report.
pub fn flush_status() -> [(&'static str, bool); 4] {
    let [a, b, c] = on_every_worker(|| {});
    [
        (POOLS[0], subnormals_flushed_on_this_thread()),
        (POOLS[1], a),
        (POOLS[2], b),
        (POOLS[3], c),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flushing_thread_turns_subnormals_into_zero() {
        // A fresh thread so that the test runner's threads keep their environment.
        std::thread::spawn(|| {
            let tiny = std::hint::black_box(f32::MIN_POSITIVE);
            let before = std::hint::black_box(tiny) * std::hint::black_box(0.25f32);
            assert!(before.is_subnormal(), "no flushing yet: {before:e}");
            if !flush_subnormals_on_this_thread() {
                return; // not implemented on this architecture
            }
            assert!(subnormals_flushed_on_this_thread());
            let after = std::hint::black_box(tiny) * std::hint::black_box(0.25f32);
            assert_eq!(after, 0.0);
            // DAZ: a subnormal operand reads as zero.
            let sub = std::hint::black_box(f32::from_bits(1));
            assert_eq!(sub * std::hint::black_box(2f32.powi(30)), 0.0);
            // Threads started from here inherit it.
            std::thread::spawn(|| assert!(subnormals_flushed_on_this_thread()))
                .join()
                .unwrap();
        })
        .join()
        .unwrap();
    }
}
