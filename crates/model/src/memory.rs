//! Refusing work that cannot fit, before allocating it: an estimate of the bytes a model or a
//! training step needs against what the machine has available. Without this an absurd config
//! (`vocab_size = 4000000000`) allocates until the kernel kills the process.

use crate::Error;

/// `MemAvailable` from `/proc/meminfo`, in bytes; None where the kernel does not say.
pub fn available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Refuses `what`, estimated at `needed` bytes, when that exceeds the memory available.
pub fn check(needed: usize, what: &str) -> Result<(), Error> {
    check_against(needed, available_bytes(), what)
}

fn check_against(needed: usize, available: Option<u64>, what: &str) -> Result<(), Error> {
    const GIB: f64 = (1u64 << 30) as f64;
    match available {
        Some(avail) if needed as u64 > avail => Err(Error::Config(format!(
            "{what} needs about {:.1} GiB, more than the {:.1} GiB available; make it smaller, or pass --ignore-memory to try anyway",
            needed as f64 / GIB,
            avail as f64 / GIB
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_estimate_above_what_is_available_is_refused_with_both_figures() {
        let e = check_against(3 << 30, Some(2 << 30), "a training step")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("3.0 GiB") && e.contains("2.0 GiB") && e.contains("--ignore-memory"),
            "{e}"
        );
        check_against(1 << 30, Some(2 << 30), "x").unwrap();
        check_against(usize::MAX, None, "x").unwrap();
        assert!(available_bytes().is_none_or(|b| b > 0));
    }
}
