//! What `meshca bench` reads of a process from /proc: CPU seconds and bytes written to storage,
//! for the server's cost per issuance and the load generator's own.

/// CPU seconds (user + system) of a process so far.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(ticks as f64 / 100.0)
}

/// Bytes a process has caused to be written to storage so far (`write_bytes` in /proc).
pub fn process_disk_write_bytes(pid: u32) -> Option<u64> {
    write_bytes(&std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?)
}

/// `write_bytes` from the text of a `/proc/<pid>/io` file.
fn write_bytes(proc_io: &str) -> Option<u64> {
    proc_io
        .lines()
        .find_map(|line| line.strip_prefix("write_bytes:"))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_is_readable() {
        assert!(process_cpu_seconds(std::process::id()).is_some());
        assert!(process_cpu_seconds(u32::MAX).is_none());
    }

    #[test]
    fn disk_writes_come_from_write_bytes() {
        let io = "rchar: 4096\nwchar: 123456\nsyscr: 9\nsyscw: 30\nread_bytes: 0\n\
                  write_bytes: 81920\ncancelled_write_bytes: 4096\n";
        assert_eq!(write_bytes(io), Some(81920));
        assert_eq!(write_bytes("rchar: 1\n"), None);
        assert!(process_disk_write_bytes(std::process::id()).is_some());
        assert!(process_disk_write_bytes(u32::MAX).is_none());
    }
}
