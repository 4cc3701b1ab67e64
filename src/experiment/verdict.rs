//! The verdict of a `dmutex cluster` experiment: did the nodes' critical sections keep mutual exclusion?
//!
//! It holds when: the counter file ends at N·K (no lost update); no two entries' `[enter, exit]` intervals
//! overlap (all nodes share the host clock, so their timestamps compare); fencing tokens strictly increase in
//! entry order; and every node made its K entries without error. Pure functions of the nodes' reports: no I/O.

use crate::experiment::workload::{CsEntry, WorkloadReport};
use serde::{Deserialize, Serialize};

/// Names one critical-section entry in a verdict.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryRef {
    /// The node that made the entry.
    pub node: u16,
    /// Which of its iterations.
    pub iteration: u32,
    /// The entry's fencing token.
    pub fencing_token: u64,
}

impl From<&CsEntry> for EntryRef {
    fn from(e: &CsEntry) -> Self {
        EntryRef { node: e.node, iteration: e.iteration, fencing_token: e.fencing_token }
    }
}

/// Two critical sections that were open at the same time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Overlap {
    /// The one that entered first.
    pub first: EntryRef,
    /// The one that entered while `first` was still inside.
    pub second: EntryRef,
    /// How long both were inside (ms).
    pub overlap_ms: f64,
}

/// Whether a run kept mutual exclusion, and what it saw if not.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// Every check passed.
    pub ok: bool,
    /// The counter file's final value.
    pub shared_counter: u64,
    /// N·K.
    pub expected_counter: u64,
    /// Entries that began inside an earlier entry, each with the earlier one still open.
    pub overlaps: Vec<Overlap>,
    /// Consecutive entries (in entry order) whose fencing token did not increase: `(earlier, later)`.
    pub token_inversions: Vec<(EntryRef, EntryRef)>,
    /// Nodes that did not make all their entries, or reported errors.
    pub incomplete: Vec<String>,
}

impl Verdict {
    /// One line: `OK — …` or `FAILED — …` with what failed.
    pub fn summary(&self) -> String {
        if self.ok {
            return "OK — no overlapping critical sections, no lost update, fencing tokens strictly increasing".into();
        }
        let mut problems = Vec::new();
        if let Some(o) = self.overlaps.first() {
            problems.push(format!(
                "{} overlapping critical section(s) (first: node {} #{} and node {} #{}, {:.3} ms)",
                self.overlaps.len(),
                o.first.node,
                o.first.iteration,
                o.second.node,
                o.second.iteration,
                o.overlap_ms
            ));
        }
        if self.shared_counter < self.expected_counter {
            problems.push(format!(
                "{} lost update(s) (counter {}, expected {})",
                self.expected_counter - self.shared_counter,
                self.shared_counter,
                self.expected_counter
            ));
        } else if self.shared_counter > self.expected_counter {
            problems.push(format!(
                "counter {} exceeds the expected {}",
                self.shared_counter, self.expected_counter
            ));
        }
        if let Some((a, b)) = self.token_inversions.first() {
            problems.push(format!(
                "fencing token did not increase {} time(s) (first: {} then {})",
                self.token_inversions.len(),
                a.fencing_token,
                b.fencing_token
            ));
        }
        problems.extend(self.incomplete.iter().cloned());
        format!("FAILED — {}", problems.join("; "))
    }
}

/// Every entry of every report, in entry order (by enter time; node and iteration break ties).
pub(crate) fn entry_order(reports: &[WorkloadReport]) -> Vec<CsEntry> {
    let mut entries: Vec<CsEntry> = reports.iter().flat_map(|r| r.entries.iter().cloned()).collect();
    entries.sort_by(|a, b| {
        a.enter_ms.total_cmp(&b.enter_ms).then(a.node.cmp(&b.node)).then(a.iteration.cmp(&b.iteration))
    });
    entries
}

/// Checks a run of `nodes` nodes × `iterations` entries whose counter file ended at `shared_counter`.
pub fn analyze(reports: &[WorkloadReport], nodes: usize, iterations: u32, shared_counter: u64) -> Verdict {
    let entries = entry_order(reports);

    // Sweep in enter order, remembering the entry that exits last so far: an entry that enters before that
    // exit overlaps it (touching intervals, enter == exit, do not overlap).
    let mut overlaps = Vec::new();
    let mut open: Option<&CsEntry> = None;
    for e in &entries {
        if let Some(prev) = open.filter(|p| e.enter_ms < p.exit_ms) {
            let overlap_ms = prev.exit_ms.min(e.exit_ms) - e.enter_ms;
            overlaps.push(Overlap { first: prev.into(), second: e.into(), overlap_ms });
        }
        if open.is_none_or(|p| e.exit_ms > p.exit_ms) {
            open = Some(e);
        }
    }

    let token_inversions = entries
        .windows(2)
        .filter(|w| w[1].fencing_token <= w[0].fencing_token)
        .map(|w| (EntryRef::from(&w[0]), EntryRef::from(&w[1])))
        .collect();

    let mut incomplete = Vec::new();
    for node in 0..nodes {
        match reports.iter().find(|r| usize::from(r.node) == node) {
            None => incomplete.push(format!("node {node}: no report")),
            Some(r) => {
                if r.entries.len() < iterations as usize {
                    incomplete.push(format!("node {node}: {}/{iterations} entries", r.entries.len()));
                }
                for e in &r.errors {
                    incomplete.push(format!("node {node}: {e}"));
                }
            }
        }
    }

    let expected_counter = nodes as u64 * u64::from(iterations);
    let mut verdict =
        Verdict { ok: false, shared_counter, expected_counter, overlaps, token_inversions, incomplete };
    verdict.ok = verdict.overlaps.is_empty()
        && verdict.token_inversions.is_empty()
        && verdict.incomplete.is_empty()
        && shared_counter == expected_counter;
    verdict
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::algo::Algorithm;

    pub(crate) fn entry(node: u16, iteration: u32, token: u64, enter: f64, exit: f64, read: u64) -> CsEntry {
        CsEntry {
            node,
            lock: "counter".into(),
            iteration,
            fencing_token: token,
            lamport_clock_at_enter: token,
            request_ms: enter - 1.0,
            enter_ms: enter,
            exit_ms: exit,
            counter_read: read,
            counter_written: read + 1,
        }
    }

    pub(crate) fn report(node: u16, iterations: u32, entries: Vec<CsEntry>) -> WorkloadReport {
        let started_ms = entries.first().map_or(0.0, |e| e.request_ms);
        let finished_ms = entries.last().map_or(0.0, |e| e.exit_ms);
        WorkloadReport {
            node,
            algorithm: Algorithm::Lamport,
            iterations,
            entries,
            errors: vec![],
            started_ms,
            finished_ms,
        }
    }

    /// Two nodes × two entries, taking turns: 0, 1, 0, 1.
    pub(crate) fn clean_run() -> Vec<WorkloadReport> {
        vec![
            report(0, 2, vec![entry(0, 0, 10, 1000.0, 1010.0, 0), entry(0, 1, 30, 1020.0, 1030.0, 2)]),
            report(1, 2, vec![entry(1, 0, 20, 1010.0, 1020.0, 1), entry(1, 1, 40, 1030.0, 1040.0, 3)]),
        ]
    }

    #[test]
    fn a_clean_run_passes() {
        let v = analyze(&clean_run(), 2, 2, 4);
        assert!(v.ok, "{v:?}");
        assert!(v.summary().starts_with("OK"));
    }

    #[test]
    fn overlapping_sections_are_found() {
        let mut reports = clean_run();
        // Node 1's second entry starts 2 ms before node 0's second one exits.
        reports[1].entries[1].enter_ms = 1028.0;
        let v = analyze(&reports, 2, 2, 4);
        assert!(!v.ok);
        assert_eq!(v.overlaps.len(), 1);
        let o = &v.overlaps[0];
        assert_eq!((o.first.node, o.first.iteration, o.second.node, o.second.iteration), (0, 1, 1, 1));
        assert!((o.overlap_ms - 2.0).abs() < 1e-9);
        assert!(v.summary().contains("1 overlapping"), "{}", v.summary());
    }

    #[test]
    fn an_entry_inside_a_long_one_overlaps_it_even_past_a_short_one() {
        // A: 0..100, B: 10..20, C: 50..60 — C overlaps A although B (its predecessor) exited.
        let reports = vec![
            report(0, 1, vec![entry(0, 0, 1, 0.0, 100.0, 0)]),
            report(1, 1, vec![entry(1, 0, 2, 10.0, 20.0, 0)]),
            report(2, 1, vec![entry(2, 0, 3, 50.0, 60.0, 0)]),
        ];
        let v = analyze(&reports, 3, 1, 3);
        assert_eq!(v.overlaps.len(), 2);
        assert!(v.overlaps.iter().all(|o| o.first.node == 0));
    }

    #[test]
    fn touching_sections_do_not_overlap() {
        let reports = vec![
            report(0, 1, vec![entry(0, 0, 1, 0.0, 10.0, 0)]),
            report(1, 1, vec![entry(1, 0, 2, 10.0, 20.0, 1)]),
        ];
        assert!(analyze(&reports, 2, 1, 2).ok);
    }

    #[test]
    fn tokens_must_strictly_increase_in_entry_order() {
        let mut reports = clean_run();
        reports[1].entries[0].fencing_token = 10; // equal to the previous entry's
        let v = analyze(&reports, 2, 2, 4);
        assert!(!v.ok);
        assert_eq!(v.token_inversions.len(), 1);
        let (a, b) = v.token_inversions[0];
        assert_eq!((a.node, b.node, a.fencing_token, b.fencing_token), (0, 1, 10, 10));
        assert!(v.summary().contains("fencing token"), "{}", v.summary());
    }

    #[test]
    fn a_lost_update_fails() {
        let v = analyze(&clean_run(), 2, 2, 3);
        assert!(!v.ok);
        assert!(v.summary().contains("1 lost update(s) (counter 3, expected 4)"), "{}", v.summary());
    }

    #[test]
    fn missing_entries_errors_and_reports_fail() {
        let mut reports = clean_run();
        reports[0].entries.pop();
        reports[0].errors.push("iteration 1: acquire \"counter\": timed out".into());
        let v = analyze(&reports, 3, 2, 3);
        assert!(!v.ok);
        assert_eq!(
            v.incomplete,
            vec![
                "node 0: 1/2 entries".to_string(),
                "node 0: iteration 1: acquire \"counter\": timed out".to_string(),
                "node 2: no report".to_string(),
            ]
        );
    }
}
