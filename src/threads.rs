//! The number of compute threads, decided once per process.
//!
//! candle asks for its thread count on every matmul and every parallel element-wise op, and
//! unless `RAYON_NUM_THREADS` is set it works it out anew each time by reading and parsing
//! `/proc/cpuinfo` (`num_cpus::get_physical`, in `candle_core::utils::get_num_threads`): a
//! fifth of a `tiny` training step went there. Setting the variable once, to the count candle
//! would have found, keeps the same threads and makes every later lookup an environment read.

/// Sets `RAYON_NUM_THREADS` to candle's own count when the user has not set it. Call it first
/// thing in `main`, before any other thread exists (the environment is not thread-safe).
pub fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}
