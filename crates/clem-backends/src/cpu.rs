//! How many threads local inference may use: never more than the cores this process may run on (its CPU
//! affinity and cgroup quota, as `available_parallelism` reports them). Workers that spin between the short
//! parallel sections of a decoding step (ours, llama.cpp's) collapse when there are more of them than cores: on
//! 2 cores, 3 threads took 22 s where 2 took 0.34 s.

/// The cores this process may run on (at least 1).
pub fn usable_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `requested` threads, at most [`usable_cores`]; the second value says whether it was lowered.
pub fn clamp_threads(requested: usize) -> (usize, bool) {
    let cores = usable_cores();
    let n = requested.clamp(1, cores);
    (n, n != requested)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_more_threads_than_cores() {
        let cores = usable_cores();
        assert_eq!(clamp_threads(cores), (cores, false));
        assert_eq!(clamp_threads(cores + 6), (cores, true));
        assert_eq!(clamp_threads(0), (1, true));
    }
}
