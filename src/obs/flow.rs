//! Message flow records and sequence diagrams: a picture of one acquire without a tracing backend.
//!
//! The node pushes a [`FlowRecord`] for every peer message it sends or receives and for local events (ENTER,
//! EXIT, a grant, a timeout) into a [`FlowLog`], a bounded ring buffer (oldest records are overwritten, so
//! memory is fixed however long the node runs). The records of one acquire are found by trace id, or the
//! recent ones of a lock by name, and rendered as a Mermaid `sequenceDiagram` ([`mermaid`]) or as a
//! standalone SVG ([`svg`]).
//!
//! Rendering rules (the same for both outputs):
//! - participants are `N<id>` for every node that appears as recorder or peer, in id order;
//! - records are drawn in time order (stable: equal times keep their given order);
//! - one arrow per message: a `Sent` record draws it; a `Received` record that matches a `Sent` one (same
//!   sender, receiver, kind, lock and Lamport timestamp) is dropped as its duplicate, and an unmatched one
//!   (the sender's records were not collected) draws the arrow itself;
//! - messages are labelled `KIND ts=N detail`, local events become `Note over N<id>: KIND ts=N detail`
//!   (detail carries e.g. the fencing token).
//!
//! Text from records is escaped for the output (Mermaid entity codes, XML entities), so a lock name can never
//! break the diagram's syntax.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;

/// Default capacity of a [`FlowLog`].
pub const DEFAULT_CAPACITY: usize = 4096;

/// Which way a record's message went, from the recording node's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// The recording node sent the message to `peer`.
    Sent,
    /// The recording node received the message from `peer`.
    Received,
    /// An event inside the recording node (ENTER, EXIT, GRANT, timeout, …).
    Local,
}

/// One message or local event, as recorded by one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// Wall-clock time of the record, milliseconds since the Unix epoch.
    pub at_unix_ms: f64,
    /// The recording node.
    pub node: u16,
    /// Sent, received or local.
    pub direction: Direction,
    /// The other end of a message (`None` for local events).
    pub peer: Option<u16>,
    /// The message type in the papers' words (REQUEST, REPLY, RELEASE, LOCK_ACQ, …) or the local event
    /// (ENTER, EXIT, GRANT, …).
    pub kind: Cow<'static, str>,
    /// The lock the message or event is about.
    pub lock: String,
    /// The algorithm (`lamport`, `ricart-agrawala`, `probable-owner`).
    pub algorithm: Cow<'static, str>,
    /// The Lamport timestamp the message carries, if any.
    pub lamport_ts: Option<u64>,
    /// The trace id (32 hex digits) of the acquire this record belongs to, when traced.
    pub trace_id: Option<String>,
    /// Free text shown after the label (e.g. `token=7`, `redirect to N2`).
    pub detail: Option<String>,
}

impl FlowRecord {
    /// The (sender, receiver) of a message record; `None` for local events or a message without a peer.
    pub(crate) fn endpoints(&self) -> Option<(u16, u16)> {
        match (self.direction, self.peer) {
            (Direction::Sent, Some(p)) => Some((self.node, p)),
            (Direction::Received, Some(p)) => Some((p, self.node)),
            _ => None,
        }
    }

    /// `KIND ts=N detail`, the label of the record's arrow or note (unescaped).
    pub(crate) fn label(&self) -> String {
        let mut s = self.kind.to_string();
        if let Some(ts) = self.lamport_ts {
            let _ = write!(s, " ts={ts}");
        }
        if let Some(d) = self.detail.as_deref().filter(|d| !d.is_empty()) {
            s.push(' ');
            s.push_str(d);
        }
        s
    }
}

/// A bounded ring buffer of flow records: pushing beyond the capacity forgets the oldest record.
#[derive(Clone, Debug)]
pub struct FlowLog {
    capacity: usize,
    records: VecDeque<FlowRecord>,
}

impl Default for FlowLog {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl FlowLog {
    /// An empty log keeping at most `capacity` records (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self { capacity, records: VecDeque::with_capacity(capacity.min(DEFAULT_CAPACITY)) }
    }

    /// Appends a record, forgetting the oldest one when full.
    pub(crate) fn push(&mut self, record: FlowRecord) {
        if self.records.len() >= self.capacity {
            self.records.pop_front();
        }
        self.records.push_back(record);
    }

    /// Number of records held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    /// All records held, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &FlowRecord> {
        self.records.iter()
    }

    /// The records of one trace, oldest first.
    pub(crate) fn by_trace(&self, trace_id: &str) -> Vec<FlowRecord> {
        self.records.iter().filter(|r| r.trace_id.as_deref() == Some(trace_id)).cloned().collect()
    }

    /// The last `limit` records about `lock`, oldest first.
    pub(crate) fn recent(&self, lock: &str, limit: usize) -> Vec<FlowRecord> {
        let mut out: Vec<FlowRecord> =
            self.records.iter().rev().filter(|r| r.lock == lock).take(limit).cloned().collect();
        out.reverse();
        out
    }

    /// The trace id of the newest traced record about `lock` (to find "the last acquire").
    #[cfg(test)]
    pub(crate) fn latest_trace(&self, lock: &str) -> Option<String> {
        self.records.iter().rev().filter(|r| r.lock == lock).find_map(|r| r.trace_id.clone())
    }
}

/// What the diagrams draw, in order.
#[derive(Debug, PartialEq)]
enum Row<'a> {
    Message { from: u16, to: u16, record: &'a FlowRecord },
    Note { node: u16, record: &'a FlowRecord },
}

type MessageKey<'a> = (u16, u16, &'a str, &'a str, Option<u64>);

fn message_key(r: &FlowRecord) -> Option<MessageKey<'_>> {
    r.endpoints().map(|(from, to)| (from, to, r.kind.as_ref(), r.lock.as_str(), r.lamport_ts))
}

/// Participants in id order and the rows to draw (see the module doc for the rules).
fn layout(records: &[FlowRecord]) -> (Vec<u16>, Vec<Row<'_>>) {
    let mut ordered: Vec<&FlowRecord> = records.iter().collect();
    ordered.sort_by(|a, b| a.at_unix_ms.total_cmp(&b.at_unix_ms));
    let mut sent: BTreeMap<MessageKey<'_>, usize> = BTreeMap::new();
    for r in &ordered {
        if r.direction == Direction::Sent
            && let Some(k) = message_key(r)
        {
            *sent.entry(k).or_default() += 1;
        }
    }
    let mut participants = BTreeSet::new();
    let mut rows = Vec::new();
    for r in ordered {
        participants.insert(r.node);
        if let Some(p) = r.peer {
            participants.insert(p);
        }
        match (r.direction, r.endpoints(), message_key(r)) {
            (Direction::Received, Some(_), Some(k)) if sent.get(&k).is_some_and(|n| *n > 0) => {
                if let Some(n) = sent.get_mut(&k) {
                    *n -= 1;
                }
            }
            (_, Some((from, to)), _) if from != to => rows.push(Row::Message { from, to, record: r }),
            _ => rows.push(Row::Note { node: r.node, record: r }),
        }
    }
    (participants.into_iter().collect(), rows)
}

/// Mermaid text: `#` and `;` are entity codes there, line breaks would end the statement.
fn mermaid_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '#' => out.push_str("#35;"),
            ';' => out.push_str("#59;"),
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A Mermaid `sequenceDiagram` of the records (see the module doc for the rules).
pub fn mermaid(records: &[FlowRecord]) -> String {
    let (participants, rows) = layout(records);
    let mut out = String::from("sequenceDiagram\n");
    for p in &participants {
        let _ = writeln!(out, "    participant N{p}");
    }
    for row in rows {
        match row {
            Row::Message { from, to, record } => {
                let _ = writeln!(out, "    N{from}->>N{to}: {}", mermaid_escape(&record.label()));
            }
            Row::Note { node, record } => {
                let _ = writeln!(out, "    Note over N{node}: {}", mermaid_escape(&record.label()));
            }
        }
    }
    out
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0 text.
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

// SVG geometry (pixels).
const MARGIN: i64 = 40;
/// The narrowest distance between two lifelines; wider when a label needs it.
const MIN_COLUMN: i64 = 180;
const HEAD_H: i64 = 30;
const HEAD_W: i64 = 80;
const ROW_H: i64 = 36;
/// Space between a note's text and its border, on each side.
const NOTE_PAD: i64 = 8;
/// Space left free beside a message label, between the lifelines it spans.
const LABEL_GAP: i64 = 20;

/// An upper bound of the width of `s` in 12 px sans-serif. A plain SVG has no font metrics, so this counts
/// per glyph class, each class at least as wide as its widest glyph in DejaVu Sans, the widest common sans
/// font (Liberation Sans, Arial and Helvetica are narrower): a box sized by it holds its text in any of them.
fn text_width(s: &str) -> i64 {
    let tenths: i64 = s
        .chars()
        .map(|c| match c {
            'i' | 'j' | 'l' | '\'' | '|' | '.' | ',' | ':' | ';' => 45,
            ' ' => 40,
            '!' => 50,
            'f' | 't' | 'r' | '-' | '(' | ')' | '[' | ']' => 55,
            'm' | 'W' => 120,
            'w' => 100,
            'M' => 105,
            '=' | '+' | '<' | '>' | '~' => 102,
            c if c.is_ascii_uppercase() => 95,
            c if c.is_ascii_digit() => 77,
            c if c.is_ascii_lowercase() => 77,
            // Other punctuation (`#`, `%`, `@`, …) and wide glyphs (CJK): a full em.
            _ => 120,
        })
        .sum();
    (tenths + 9) / 10
}

/// A standalone SVG sequence diagram of the records: a head and a dashed lifeline per node, one arrow per
/// message (`<g class="message">`) and one box per local event (`<g class="note">`), same rules as
/// [`mermaid`]. Boxes are as wide as their text, lifelines far enough apart for the widest label, and the
/// canvas holds everything.
pub fn svg(records: &[FlowRecord]) -> String {
    let (participants, rows) = layout(records);
    let column_of: BTreeMap<u16, i64> =
        participants.iter().enumerate().map(|(i, p)| (*p, i64::try_from(i).unwrap_or(0))).collect();
    let col = |node: u16| column_of.get(&node).copied().unwrap_or(0);
    let labels: Vec<(String, i64)> = rows
        .iter()
        .map(|row| {
            let label = match row {
                Row::Message { record, .. } | Row::Note { record, .. } => record.label(),
            };
            let w = text_width(&label);
            (label, w)
        })
        .collect();
    // Lifelines far enough apart that every message label fits between the lifelines it spans, and that
    // notes on neighbouring lifelines never touch.
    let mut column = MIN_COLUMN;
    for (row, (_, w)) in rows.iter().zip(&labels) {
        let needed = match row {
            Row::Message { from, to, .. } => (w + LABEL_GAP) / (col(*from) - col(*to)).abs().max(1),
            Row::Note { .. } => w + 2 * NOTE_PAD + LABEL_GAP,
        };
        column = column.max(needed);
    }
    // Horizontal extent of everything, lifeline 0 at x = 0; then shift so the leftmost pixel is at MARGIN.
    let columns = i64::try_from(participants.len()).unwrap_or(0).max(1);
    let (mut left, mut right) = (-HEAD_W / 2, (columns - 1) * column + HEAD_W / 2);
    for (row, (_, w)) in rows.iter().zip(&labels) {
        let (centre, half) = match row {
            Row::Message { from, to, .. } => ((col(*from) + col(*to)) * column / 2, w / 2 + 1),
            Row::Note { node, .. } => (col(*node) * column, w / 2 + NOTE_PAD),
        };
        left = left.min(centre - half);
        right = right.max(centre + half);
    }
    let shift = MARGIN - left;
    let x_of = |node: u16| shift + col(node) * column;
    let width = right - left + 2 * MARGIN;
    let row_count = i64::try_from(rows.len()).unwrap_or(0);
    let top = MARGIN + HEAD_H + ROW_H / 2;
    let bottom = top + row_count * ROW_H;
    let height = bottom + MARGIN;

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    out.push_str(
        r##"  <defs><marker id="arrowhead" markerWidth="10" markerHeight="7" refX="10" refY="3.5" orient="auto"><polygon points="0 0, 10 3.5, 0 7" fill="#333"/></marker></defs>
  <rect width="100%" height="100%" fill="white"/>
"##,
    );
    for p in &participants {
        let x = x_of(*p);
        let _ = writeln!(
            out,
            r##"  <g class="participant"><rect x="{}" y="{MARGIN}" width="{HEAD_W}" height="{HEAD_H}" rx="4" fill="#eef" stroke="#336"/><text x="{x}" y="{}" text-anchor="middle" font-weight="bold">N{p}</text><line x1="{x}" y1="{}" x2="{x}" y2="{bottom}" stroke="#999" stroke-dasharray="4 4"/></g>"##,
            x - HEAD_W / 2,
            MARGIN + HEAD_H / 2 + 4,
            MARGIN + HEAD_H,
        );
    }
    for (i, (row, (label, w))) in rows.iter().zip(&labels).enumerate() {
        let y = top + i64::try_from(i).unwrap_or(0) * ROW_H + ROW_H / 2;
        match row {
            Row::Message { from, to, .. } => {
                let (x1, x2) = (x_of(*from), x_of(*to));
                let _ = writeln!(
                    out,
                    r##"  <g class="message"><line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" stroke="#333" marker-end="url(#arrowhead)"/><text x="{}" y="{}" text-anchor="middle">{}</text></g>"##,
                    (x1 + x2) / 2,
                    y - 5,
                    xml_escape(label),
                );
            }
            Row::Note { node, .. } => {
                let x = x_of(*node);
                let box_w = w + 2 * NOTE_PAD;
                let _ = writeln!(
                    out,
                    r##"  <g class="note"><rect x="{}" y="{}" width="{box_w}" height="{}" fill="#ffc" stroke="#aa3"/><text x="{x}" y="{}" text-anchor="middle">{}</text></g>"##,
                    x - box_w / 2,
                    y - ROW_H / 2 + 6,
                    ROW_H - 12,
                    y + 4,
                    xml_escape(label),
                );
            }
        }
    }
    out.push_str("</svg>\n");
    out
}

/// The id of the acquire to draw from merged records: `wanted` if given, else the acquire of the newest
/// ENTER record, else of the newest record with an id.
pub fn pick_acquire(records: &[FlowRecord], wanted: Option<&str>) -> Option<String> {
    if let Some(w) = wanted {
        return Some(w.to_string());
    }
    let newest = |enter_only: bool| {
        records
            .iter()
            .filter(|r| {
                r.trace_id.is_some()
                    && (!enter_only || (r.direction == Direction::Local && r.kind == "ENTER"))
            })
            .max_by(|a, b| a.at_unix_ms.total_cmp(&b.at_unix_ms))
            .and_then(|r| r.trace_id.clone())
    };
    newest(true).or_else(|| newest(false))
}

/// The answer of `GET /v1/flow`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FlowResponse {
    /// The answering node.
    pub node: u16,
    /// Its records, oldest first.
    pub records: Vec<FlowRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(
        at: f64,
        node: u16,
        direction: Direction,
        peer: Option<u16>,
        kind: &str,
        ts: Option<u64>,
    ) -> FlowRecord {
        FlowRecord {
            at_unix_ms: at,
            node,
            direction,
            peer,
            kind: kind.to_string().into(),
            lock: "db".into(),
            algorithm: "lamport".into(),
            lamport_ts: ts,
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
            detail: None,
        }
    }

    /// Lamport 1978 over 3 nodes, node 0 acquiring, as all three nodes record it: rule 1 (REQUEST to every
    /// other process), rule 2 (timestamped REPLY), rule 5 (enter once the own request heads the queue and a
    /// later message came from everyone), rule 3 (RELEASE to everyone).
    fn lamport_acquire() -> Vec<FlowRecord> {
        use Direction::*;
        let mut enter = rec(9.0, 0, Local, None, "ENTER", Some(4));
        enter.detail = Some("token=1".into());
        vec![
            rec(1.0, 0, Sent, Some(1), "REQUEST", Some(1)),
            rec(1.1, 0, Sent, Some(2), "REQUEST", Some(1)),
            rec(2.0, 1, Received, Some(0), "REQUEST", Some(1)),
            rec(2.1, 1, Sent, Some(0), "REPLY", Some(3)),
            rec(3.0, 2, Received, Some(0), "REQUEST", Some(1)),
            rec(3.1, 2, Sent, Some(0), "REPLY", Some(3)),
            rec(4.0, 0, Received, Some(1), "REPLY", Some(3)),
            rec(5.0, 0, Received, Some(2), "REPLY", Some(3)),
            enter,
            rec(10.0, 0, Sent, Some(1), "RELEASE", Some(5)),
            rec(10.1, 0, Sent, Some(2), "RELEASE", Some(5)),
            rec(11.0, 2, Received, Some(0), "RELEASE", Some(5)),
            rec(11.5, 1, Received, Some(0), "RELEASE", Some(5)),
        ]
    }

    #[test]
    fn lamport_acquire_renders_one_arrow_per_message() {
        let expected = "\
sequenceDiagram
    participant N0
    participant N1
    participant N2
    N0->>N1: REQUEST ts=1
    N0->>N2: REQUEST ts=1
    N1->>N0: REPLY ts=3
    N2->>N0: REPLY ts=3
    Note over N0: ENTER ts=4 token=1
    N0->>N1: RELEASE ts=5
    N0->>N2: RELEASE ts=5
";
        assert_eq!(mermaid(&lamport_acquire()), expected);
    }

    #[test]
    fn order_of_input_does_not_matter_and_unmatched_receipts_still_draw() {
        let mut records = lamport_acquire();
        records.reverse();
        assert_eq!(mermaid(&records), mermaid(&lamport_acquire()));
        // Only node 1's records: its receipts have no Sent twin and draw the arrow themselves.
        let only_n1: Vec<FlowRecord> = lamport_acquire().into_iter().filter(|r| r.node == 1).collect();
        assert_eq!(
            mermaid(&only_n1),
            "sequenceDiagram\n    participant N0\n    participant N1\n    N0->>N1: REQUEST ts=1\n    \
             N1->>N0: REPLY ts=3\n    N0->>N1: RELEASE ts=5\n"
        );
    }

    #[test]
    fn hostile_text_is_escaped() {
        let mut r = rec(1.0, 3, Direction::Local, None, "EXIT", None);
        r.detail = Some("x;\n#<b>&\"".into());
        assert_eq!(
            mermaid(&[r.clone()]),
            "sequenceDiagram\n    participant N3\n    Note over N3: EXIT x#59; #35;<b>&\"\n"
        );
        let doc = svg(&[r]);
        assert!(roxmltree::Document::parse(&doc).is_ok(), "{doc}");
    }

    #[test]
    fn svg_is_well_formed_with_one_arrow_per_message() {
        let doc = svg(&lamport_acquire());
        let parsed = match roxmltree::Document::parse(&doc) {
            Ok(d) => d,
            Err(e) => panic!("not XML: {e}\n{doc}"),
        };
        let count =
            |class: &str| parsed.descendants().filter(|n| n.attribute("class") == Some(class)).count();
        assert_eq!(count("participant"), 3);
        assert_eq!(count("message"), 6);
        assert_eq!(count("note"), 1);
        assert_eq!(parsed.root_element().tag_name().name(), "svg");
    }

    /// Every note box holds its text (by the conservative width estimate), every label fits between the
    /// lifelines it spans, and nothing leaves the canvas: a long ENTER detail on the leftmost node was
    /// clipped by fixed 150 px boxes.
    #[test]
    fn svg_boxes_fit_their_text_inside_the_canvas() {
        let mut records = lamport_acquire();
        let mut enter = rec(9.5, 0, Direction::Local, None, "ENTER", Some(43));
        enter.detail = Some("token=2555904 a much longer detail than any box of 150 px would hold".into());
        records.push(enter);
        let mut long = rec(9.6, 1, Direction::Sent, Some(2), "LOCK_REP", Some(44));
        long.detail = Some("redirect owner=2 epoch=7 hops=3 WWWWMMMM".into());
        records.push(long);
        let doc = svg(&records);
        let parsed = match roxmltree::Document::parse(&doc) {
            Ok(d) => d,
            Err(e) => panic!("not XML: {e}\n{doc}"),
        };
        let num = |n: roxmltree::Node<'_, '_>, a: &str| n.attribute(a).and_then(|v| v.parse::<i64>().ok());
        let root = parsed.root_element();
        let width = num(root, "width").unwrap_or(0);
        let lifelines: Vec<i64> = parsed
            .descendants()
            .filter(|n| n.attribute("class") == Some("participant"))
            .filter_map(|g| g.children().find(|c| c.has_tag_name("line")).and_then(|l| num(l, "x1")))
            .collect();
        let mut notes = 0;
        for g in parsed.descendants().filter(|n| matches!(n.attribute("class"), Some("note" | "message"))) {
            let Some(text) = g.children().find(|c| c.has_tag_name("text")) else { panic!("no text") };
            let label = text.text().unwrap_or_default();
            let (tx, tw) = (num(text, "x").unwrap_or(0), text_width(label));
            assert!(tx - tw / 2 >= 0 && tx + tw / 2 <= width, "{label:?} leaves the canvas (width {width})");
            if g.attribute("class") == Some("note") {
                notes += 1;
                let Some(r) = g.children().find(|c| c.has_tag_name("rect")) else { panic!("no rect") };
                let (x, w) = (num(r, "x").unwrap_or(-1), num(r, "width").unwrap_or(0));
                assert!(w >= tw, "box {w} px for {label:?} ({tw} px)");
                assert!(x <= tx - tw / 2 && x + w >= tx + tw / 2, "{label:?} sticks out of its box");
                assert!(x >= 0 && x + w <= width, "box of {label:?} leaves the canvas");
            } else {
                let Some(l) = g.children().find(|c| c.has_tag_name("line")) else { panic!("no line") };
                let (x1, x2) = (num(l, "x1").unwrap_or(0), num(l, "x2").unwrap_or(0));
                assert!((x1 - x2).abs() >= tw, "{label:?} ({tw} px) is wider than its arrow");
            }
        }
        assert_eq!(notes, 2);
        assert!(lifelines.windows(2).all(|w| w[1] - w[0] >= MIN_COLUMN), "{lifelines:?}");
        // The estimate bounds the real width: 39.8 and 181.2 px in DejaVu Sans at 12 px (its hmtx table).
        assert!(text_width("ENTER") >= 40 && text_width("ENTER ts=43 token=2555904") >= 182);
    }

    #[test]
    fn ring_buffer_forgets_the_oldest_and_queries_by_trace_and_lock() {
        let mut log = FlowLog::new(3);
        for i in 0..5u16 {
            let mut r = rec(f64::from(i), i, Direction::Local, None, "ENTER", None);
            r.trace_id = Some(format!("t{}", i % 2));
            r.lock = if i == 4 { "other".into() } else { "db".into() };
            log.push(r);
        }
        assert_eq!(log.len(), 3);
        assert_eq!(log.iter().map(|r| r.node).collect::<Vec<_>>(), vec![2, 3, 4]);
        assert_eq!(log.by_trace("t0").iter().map(|r| r.node).collect::<Vec<_>>(), vec![2, 4]);
        assert_eq!(log.recent("db", 1).iter().map(|r| r.node).collect::<Vec<_>>(), vec![3]);
        assert_eq!(log.recent("db", 10).iter().map(|r| r.node).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(log.latest_trace("db").as_deref(), Some("t1"));
        assert_eq!(log.latest_trace("none"), None);
    }

    #[test]
    fn records_round_trip_through_json() {
        let r = rec(1.5, 0, Direction::Sent, Some(1), "LOCK_ACQ", None);
        let text = serde_json::to_string(&r).unwrap_or_default();
        assert!(text.contains("\"direction\":\"sent\""), "{text}");
        assert_eq!(serde_json::from_str::<FlowRecord>(&text).ok(), Some(r));
    }
}
