//! The process's memory use, for benchmark reports.

/// Peak resident memory of this process so far, in MiB (`VmHWM` of `/proc/self/status`);
/// `None` where the system does not report it.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn peak_rss_grows_with_touched_memory() {
        let Some(before) = super::peak_rss_mib() else {
            return; // not reported on this system
        };
        let block = vec![1u8; 64 << 20];
        std::hint::black_box(&block);
        let after = super::peak_rss_mib().expect("reported once");
        assert!(after >= before + 60.0, "{before} MiB -> {after} MiB");
    }
}
