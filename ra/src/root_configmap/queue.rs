//! The namespaces waiting to be reconciled, with client-go's work-queue guarantees: a namespace
//! is queued at most once, never handled by two workers at once (one added while in hand runs
//! again afterwards), and a failed one comes back after a backoff that grows per namespace,
//! so one broken namespace neither blocks nor starves the others.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Duration;

use meshca_pki::timing::Backoff;
use tokio::time::Instant;

#[derive(Debug)]
pub(super) struct WorkQueue {
    ready: VecDeque<String>,
    /// In `ready`, so not added twice.
    queued: HashSet<String>,
    /// Handed to a worker and not yet done.
    processing: HashSet<String>,
    /// Added while processing: goes back to `ready` when done.
    dirty: HashSet<String>,
    /// Retries not yet due, by time.
    delayed: BTreeSet<(Instant, String)>,
    due: HashMap<String, Instant>,
    failures: HashMap<String, u32>,
    backoff: Backoff,
}

// === impl WorkQueue ===

impl WorkQueue {
    pub(super) fn new(backoff: Backoff) -> Self {
        Self {
            ready: VecDeque::new(),
            queued: HashSet::new(),
            processing: HashSet::new(),
            dirty: HashSet::new(),
            delayed: BTreeSet::new(),
            due: HashMap::new(),
            failures: HashMap::new(),
            backoff,
        }
    }

    /// Queues `namespace` now (a pending retry of it is folded into this).
    pub(super) fn add(&mut self, namespace: &str) {
        if let Some(at) = self.due.remove(namespace) {
            self.delayed.remove(&(at, namespace.to_string()));
        }
        if self.processing.contains(namespace) {
            self.dirty.insert(namespace.to_string());
        } else if self.queued.insert(namespace.to_string()) {
            self.ready.push_back(namespace.to_string());
        }
    }

    /// The next namespace to handle, moving retries that are due at `now` into line first.
    pub(super) fn pop(&mut self, now: Instant) -> Option<String> {
        while let Some((at, _)) = self.delayed.first() {
            if *at > now {
                break;
            }
            let (_, namespace) = self.delayed.pop_first().expect("checked non-empty");
            self.due.remove(&namespace);
            self.add(&namespace);
        }
        let namespace = self.ready.pop_front()?;
        self.queued.remove(&namespace);
        self.processing.insert(namespace.clone());
        Some(namespace)
    }

    /// A worker finished `namespace`. A failure schedules a retry after this namespace's
    /// backoff; success resets it. Returns the retry delay, if any.
    pub(super) fn done(
        &mut self,
        namespace: &str,
        succeeded: bool,
        now: Instant,
        random: f64,
    ) -> Option<Duration> {
        self.processing.remove(namespace);
        let mut retry = None;
        if succeeded {
            self.failures.remove(namespace);
        } else {
            let failures = self.failures.entry(namespace.to_string()).or_default();
            let delay = self.backoff.delay(*failures, random);
            *failures = failures.saturating_add(1);
            self.delayed.insert((now + delay, namespace.to_string()));
            self.due.insert(namespace.to_string(), now + delay);
            retry = Some(delay);
        }
        if self.dirty.remove(namespace) {
            self.add(namespace);
        }
        retry
    }

    /// When the earliest retry is due, to sleep until then.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.delayed.first().map(|(at, _)| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: Backoff = Backoff {
        base: Duration::from_millis(100),
        cap: Duration::from_secs(10),
        low: 1.0,
        spread: 0.0,
    };

    #[test]
    fn a_namespace_is_queued_once_and_handled_by_one_worker() {
        let now = Instant::now();
        let mut q = WorkQueue::new(BACKOFF);
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.pop(now).as_deref(), Some("a"));
        // Added again while in hand: not handed out twice, but runs again afterwards.
        q.add("a");
        assert_eq!(q.pop(now).as_deref(), Some("b"));
        assert_eq!(q.pop(now), None);
        assert_eq!(q.done("a", true, now, 0.5), None);
        assert_eq!(q.pop(now).as_deref(), Some("a"));
    }

    #[test]
    fn failures_back_off_per_namespace_without_blocking_others() {
        let t0 = Instant::now();
        let mut q = WorkQueue::new(BACKOFF);
        q.add("bad");
        q.add("good");
        let bad = q.pop(t0).unwrap();
        assert_eq!(
            q.done(&bad, false, t0, 0.5),
            Some(Duration::from_millis(100))
        );
        assert_eq!(q.pop(t0).as_deref(), Some("good"));
        q.done("good", true, t0, 0.5);
        assert_eq!(q.pop(t0), None, "the retry is not due yet");
        assert_eq!(q.next_due(), Some(t0 + Duration::from_millis(100)));
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(q.pop(t1).as_deref(), Some("bad"));
        assert_eq!(
            q.done("bad", false, t1, 0.5),
            Some(Duration::from_millis(200)),
            "the second failure waits longer"
        );
        // New information makes it run at once, and success resets the backoff.
        q.add("bad");
        assert_eq!(q.next_due(), None);
        assert_eq!(q.pop(t1).as_deref(), Some("bad"));
        q.done("bad", true, t1, 0.5);
        q.add("bad");
        q.pop(t1);
        assert_eq!(
            q.done("bad", false, t1, 0.5),
            Some(Duration::from_millis(100))
        );
        assert!(q.processing.is_empty());
    }
}
