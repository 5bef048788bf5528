//! When `meshca bench` sends: the open loop's schedule (pure, and the thread that keeps it) and
//! the backoff before resending a call the server shed.

use std::time::{Duration, Instant};

use meshca_pki::timing::Backoff;

/// Resending a shed call: 5 ms doubling to 2 s, each wait in `[½, 1½)` of its ceiling.
const SHED_RETRY: Backoff = Backoff {
    base: Duration::from_millis(5),
    cap: Duration::from_secs(2),
    low: 0.5,
    spread: 1.0,
};

/// How long a client waits before resending a call the server shed: 5 ms doubling to 2 s,
/// scaled by `jitter` ∈ [0, 1) into [½, 1½) of that, so shed callers come back spread out
/// rather than as the next burst.
pub fn shed_retry_delay(attempt: u32, jitter: f64) -> Duration {
    SHED_RETRY.delay(attempt, jitter)
}

/// When the `n`th call of an open loop at `rate` per second is due.
pub fn scheduled_start(started: Instant, rate: f64, n: u64) -> Instant {
    started + Duration::from_secs_f64(n as f64 / rate)
}

/// The open loop's clock: a thread of its own hands out `(n, scheduled start)` as each call
/// falls due, until `limit` calls or `deadline`. Not Tokio's timer: its 1 ms wheel would start
/// each call up to a millisecond late, and since latency counts from the scheduled start that
/// slack would be charged to the server. A thread sleep wakes within tens of microseconds.
/// Calls that find every worker busy wait in the channel with their start time already set,
/// so a server that falls behind still shows its queue.
pub(super) fn pace(
    started: Instant,
    rate: f64,
    limit: Option<u64>,
    deadline: Option<Instant>,
) -> tokio::sync::mpsc::Receiver<(u64, Instant)> {
    let (due, schedule) = tokio::sync::mpsc::channel(1 << 16);
    std::thread::spawn(move || {
        for n in 0.. {
            let at = scheduled_start(started, rate, n);
            if limit.is_some_and(|l| n >= l) || deadline.is_some_and(|d| at >= d) {
                break;
            }
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if due.blocking_send((n, at)).is_err() {
                break;
            }
        }
    });
    schedule
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_loop_calls_are_spaced_by_the_rate() {
        let started = Instant::now();
        assert_eq!(scheduled_start(started, 1000.0, 0), started);
        assert_eq!(
            scheduled_start(started, 1000.0, 250),
            started + Duration::from_millis(250)
        );
        assert_eq!(
            scheduled_start(started, 4.0, 3),
            started + Duration::from_millis(750)
        );
    }

    #[tokio::test]
    async fn the_pacer_hands_out_each_call_once_in_order_and_never_early() {
        let started = Instant::now();
        let mut schedule = pace(started, 2000.0, Some(40), None);
        let mut seen = Vec::new();
        while let Some((n, at)) = schedule.recv().await {
            assert_eq!(at, scheduled_start(started, 2000.0, n));
            assert!(
                Instant::now() >= at,
                "call {n} was handed out before it was due"
            );
            seen.push(n);
        }
        assert_eq!(seen, (0..40).collect::<Vec<_>>());

        // A deadline ends it too: nothing due at or after it is handed out.
        let started = Instant::now();
        let deadline = started + Duration::from_micros(30_500);
        let mut schedule = pace(started, 1000.0, None, Some(deadline));
        let mut count = 0;
        while let Some((_, at)) = schedule.recv().await {
            assert!(at < deadline);
            count += 1;
        }
        assert_eq!(count, 31, "calls due at 0, 1, …, 30 ms");
    }

    #[test]
    fn shed_retries_back_off_to_a_cap_with_jitter() {
        assert_eq!(shed_retry_delay(0, 0.5), Duration::from_millis(5));
        assert_eq!(shed_retry_delay(2, 0.5), Duration::from_millis(20));
        assert_eq!(shed_retry_delay(20, 0.5), Duration::from_secs(2));
        assert_eq!(shed_retry_delay(0, 0.0), Duration::from_micros(2500));
        assert_eq!(
            shed_retry_delay(20, 0.999),
            Duration::from_secs(2).mul_f64(1.499)
        );
        assert_eq!(shed_retry_delay(u32::MAX, 5.0), Duration::from_secs(3));
    }
}
