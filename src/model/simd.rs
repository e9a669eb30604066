//! Which vector instruction set the hand-vectorised CPU code runs (the element-wise kernels,
//! the matrix-vector kernel). The binary targets baseline x86-64 so that it runs anywhere;
//! each such function is also compiled for AVX2 + FMA and for AVX-512 and picks the widest
//! the CPU has, at run time. `SOCRATUNE_SIMD` caps the choice (`avx512`, `avx2`, `baseline`):
//! to check on one machine what another runs, and to time one against another.

use std::sync::OnceLock;

/// An instruction set tier, narrowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// What every x86-64 (SSE2) or other CPU has: the portable code.
    Baseline,
    /// AVX2, FMA, BMI1/2 (x86-64-v3: Haswell, Zen and later).
    Avx2,
    /// AVX-512 F/BW/DQ/VL on top (x86-64-v4: Skylake-SP, Ice Lake, Sapphire Rapids, Zen 4).
    Avx512,
}

/// The environment variable that caps the level.
pub const SIMD_ENV: &str = "SOCRATUNE_SIMD";

impl Level {
    /// `avx512`, `avx2` or `baseline`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "avx512" => Ok(Level::Avx512),
            "avx2" => Ok(Level::Avx2),
            "baseline" => Ok(Level::Baseline),
            other => Err(format!(
                "{SIMD_ENV}: unknown level `{other}` (avx512, avx2 or baseline)"
            )),
        }
    }
}

/// The widest tier this CPU has.
pub fn detected() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") {
            return Level::Avx512;
        }
        if has!("avx2") && has!("fma") && has!("bmi1") && has!("bmi2") {
            return Level::Avx2;
        }
    }
    Level::Baseline
}

/// `SOCRATUNE_SIMD` when set and valid (checked where a model loads, see [`check_env`]).
fn cap() -> Option<Level> {
    std::env::var(SIMD_ENV)
        .ok()
        .and_then(|v| Level::parse(&v).ok())
}

/// An error naming the variable when `SOCRATUNE_SIMD` is set to something unknown.
pub fn check_env() -> Result<(), String> {
    match std::env::var(SIMD_ENV) {
        Ok(v) => Level::parse(&v).map(|_| ()),
        Err(_) => Ok(()),
    }
}

/// The tier the vectorised code runs: the CPU's, capped by `SOCRATUNE_SIMD`. Decided once.
pub fn level() -> Level {
    #[cfg(test)]
    if let Some(l) = FORCED.with(|f| f.get()) {
        return l;
    }
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| match cap() {
        Some(c) => c.min(detected()),
        None => detected(),
    })
}

#[cfg(test)]
thread_local! {
    /// A level a test forces on its own thread (the row functions it calls run on it).
    pub static FORCED: std::cell::Cell<Option<Level>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` once at each level this CPU has, forced on this thread: `(level, result)`.
#[cfg(test)]
pub fn at_each_level<R>(f: impl Fn() -> R) -> Vec<(Level, R)> {
    let mut out = vec![];
    for l in [Level::Baseline, Level::Avx2, Level::Avx512] {
        if l <= detected() {
            FORCED.with(|c| c.set(Some(l)));
            out.push((l, f()));
        }
    }
    FORCED.with(|c| c.set(None));
    out
}

/// Defines `fn $name` over one body compiled three times, chosen by [`level`]. The body must
/// be plain scalar code written to auto-vectorise: the three versions then run the same IEEE
/// operations in the same order (Rust never contracts `a * b + c` into an FMA) and give
/// identical bits.
macro_rules! wide {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi1,bmi2")]
                fn v4($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                #[target_feature(enable = "avx2,fma,bmi1,bmi2")]
                fn v3($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                match $crate::model::simd::level() {
                    // SAFETY: the CPU has the features the version is compiled for.
                    $crate::model::simd::Level::Avx512 => return unsafe { v4($($arg),*) },
                    $crate::model::simd::Level::Avx2 => return unsafe { v3($($arg),*) },
                    $crate::model::simd::Level::Baseline => {}
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use wide;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_order() {
        assert_eq!(Level::parse("avx2"), Ok(Level::Avx2));
        assert_eq!(Level::parse(" baseline "), Ok(Level::Baseline));
        let e = Level::parse("sse9").unwrap_err();
        assert!(e.contains(SIMD_ENV) && e.contains("sse9"), "{e}");
        assert!(Level::Baseline < Level::Avx2 && Level::Avx2 < Level::Avx512);
        assert!(level() <= detected());
    }
}
