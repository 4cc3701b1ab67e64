//! Pictures of the experiment: SVG charts drawn with `plotters` and its SVG backend.
//!
//! Four charts, each a pure function of plain data returning the SVG text:
//!
//! * [`gantt`]: critical-section occupancy per node over time. One bar per [`CsEntry`] from enter to exit, a thin
//!   grey line for the request→enter wait before it. Entries whose interval overlaps another entry of the *same
//!   lock* are drawn in [`WARNING_COLOUR`] and the title gets " — OVERLAP!": a mutual-exclusion violation must be
//!   visible at a glance.
//! * [`latency`]: waiting time (enter − request) per node, mean and p99 side by side.
//! * [`messages`]: message counts per node, stacked by message type.
//! * [`sweep`]: a metric against the cluster size N, one line per algorithm; for messages per entry also the
//!   textbook costs 3(N−1) (Lamport) and 2(N−1) (Ricart–Agrawala) as dashed reference lines. [`sweep_csv`] gives
//!   the same points as a table.
//!
//! Rules this module keeps:
//! * No hand-written SVG: every shape and text goes through plotters. The `ttf` feature is off, so no system font
//!   is needed; the SVG backend writes `<text>` elements and the viewer picks the font.
//! * Never panics on its input (which comes from the network): non-finite times are skipped, empty inputs give an
//!   empty but valid chart, and drawing errors are returned as [`ChartError`].
//! * Deterministic output: everything is ordered by `BTreeMap`/sorting, colours come from fixed palettes by rank.
//! * Data bars and markers are drawn with opacity [`DATA_OPACITY`] and legend swatches fully opaque, so a reader
//!   (or a test) can count the data bars of one colour in the SVG: `<rect fill=COLOUR opacity="0.9">`. Legend
//!   swatches are never `<polyline>`s, so each data line is exactly one `<polyline>` of its colour.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::chart::MeshStyle;
use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, ValueFormatter};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};

pub(crate) use crate::experiment::workload::CsEntry;

/// The style every chart's mesh shares: fonts, no minor grid lines, a light major grid.
fn house_mesh<'m, 'a, 'b, X, Y, XT, YT, DB>(
    m: &'m mut MeshStyle<'a, 'b, X, Y, DB>,
) -> &'m mut MeshStyle<'a, 'b, X, Y, DB>
where
    X: Ranged<ValueType = XT> + ValueFormatter<XT>,
    Y: Ranged<ValueType = YT> + ValueFormatter<YT>,
    DB: DrawingBackend,
{
    m.axis_desc_style((FONT, AXIS_DESC_SIZE))
        .label_style((FONT, LABEL_SIZE))
        .light_line_style(TRANSPARENT)
        .bold_line_style(BOLD_GRID)
}

/// Width of every chart in pixels.
pub(crate) const WIDTH: u32 = 960;
/// Height of every chart in pixels.
pub(crate) const HEIGHT: u32 = 480;
/// Width of the legend panel on the right of each chart, in pixels.
const LEGEND_WIDTH: u32 = 215;
/// Opacity of data bars and markers (legend swatches are opaque): makes them countable in the SVG.
pub const DATA_OPACITY: f64 = 0.9;
/// Colour of critical sections that overlap another one on the same lock (`#d62728`).
pub const WARNING_COLOUR: RGBColor = RGBColor(0xd6, 0x27, 0x28);
/// Colour of the request→enter waiting line in the Gantt chart.
const WAIT_COLOUR: RGBColor = RGBColor(0xa0, 0xa0, 0xa0);
/// Colour of the dashed Lamport reference line 3(N−1).
const LAMPORT_REF_COLOUR: RGBColor = RGBColor(0x40, 0x40, 0x40);
/// Colour of the dashed Ricart–Agrawala reference line 2(N−1).
const RA_REF_COLOUR: RGBColor = RGBColor(0x99, 0x99, 0x99);
/// Grid lines at the labelled ticks (the light in-between lines are off): light enough not to compete with data.
const BOLD_GRID: RGBColor = RGBColor(0xd8, 0xd8, 0xd8);

/// The categorical palette (matplotlib's tab10 without its red, kept for [`WARNING_COLOUR`], and its grey, which
/// reads as "inactive"). Colours cycle when there are more than eight categories.
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
];

const FONT: &str = "sans-serif";
const TITLE_SIZE: u32 = 24;
const AXIS_DESC_SIZE: u32 = 17;
const LABEL_SIZE: u32 = 16;
const LEGEND_SIZE: u32 = 16;

/// Why a chart could not be drawn or written.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    /// plotters reported a drawing error.
    #[error("drawing the chart failed: {0}")]
    Draw(String),
    /// The SVG could not be written to its file.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The chart file that could not be written.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Converts any plotters drawing error into ours (its message is all a caller can use).
fn draw_err<E: std::fmt::Display>(e: E) -> ChartError {
    ChartError::Draw(e.to_string())
}

/// One run of a sweep: an algorithm on `nodes` nodes made `entries` critical-section entries with `messages` peer
/// messages in `execution_ms`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepPoint {
    /// The algorithm's name (one line per distinct name).
    pub algorithm: String,
    /// The cluster size N.
    pub nodes: u32,
    /// Critical-section entries made in the run.
    pub entries: u64,
    /// Peer messages sent in the run.
    pub messages: u64,
    /// Wall-clock time of the run in milliseconds.
    pub execution_ms: f64,
}

impl SweepPoint {
    /// Messages per critical-section entry, `None` without entries.
    pub(crate) fn messages_per_entry(&self) -> Option<f64> {
        (self.entries > 0).then(|| self.messages as f64 / self.entries as f64)
    }

    /// Entries per second, `None` when the run took no (or a non-finite) time.
    pub(crate) fn entries_per_s(&self) -> Option<f64> {
        (self.execution_ms.is_finite() && self.execution_ms > 0.0)
            .then(|| self.entries as f64 / (self.execution_ms / 1000.0))
    }
}

/// What [`sweep`] plots against N.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SweepMetric {
    /// Wall-clock time of the run (plotted in seconds).
    ExecutionTime,
    /// Peer messages per critical-section entry, with the textbook 3(N−1) and 2(N−1) as references.
    MessagesPerEntry,
}

/// Waiting-time statistics of one node (enter − request, in ms).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyStats {
    /// How many entries.
    pub count: usize,
    /// Mean waiting time.
    pub mean_ms: f64,
    /// 99th percentile (nearest rank: the smallest value with at least 99 % of the values at or below it).
    pub p99_ms: f64,
    /// Longest wait.
    pub max_ms: f64,
}

/// Writes an SVG (from any chart function) to `path`.
pub fn write_svg(path: impl AsRef<Path>, svg: &str) -> Result<(), ChartError> {
    let path = path.as_ref();
    std::fs::write(path, svg).map_err(|source| ChartError::Write { path: path.to_path_buf(), source })
}

/// The colour of category `rank` (0-based) in [`PALETTE`].
fn palette(rank: usize) -> RGBColor {
    PALETTE[rank % PALETTE.len()]
}

/// Whether a time is usable: the data comes from other processes, so NaN and infinities are possible in principle.
fn entry_is_finite(e: &CsEntry) -> bool {
    e.request_ms.is_finite() && e.enter_ms.is_finite() && e.exit_ms.is_finite()
}

/// For each entry, whether its critical section overlaps that of another entry of the same lock.
///
/// Intervals are `[enter, max(exit, enter)]` and two overlap when each starts strictly before the other ends, so
/// one that starts exactly when another ends does not overlap it. Entries with non-finite times never overlap.
/// Cost: a sort per lock plus the number of overlapping pairs.
pub(crate) fn overlaps(entries: &[CsEntry]) -> Vec<bool> {
    let mut by_lock: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, e) in entries.iter().enumerate() {
        if entry_is_finite(e) {
            by_lock.entry(e.lock.as_str()).or_default().push(i);
        }
    }
    let span = |i: usize| (entries[i].enter_ms, entries[i].exit_ms.max(entries[i].enter_ms));
    let mut overlapping = vec![false; entries.len()];
    for mut ids in by_lock.into_values() {
        // Sorting by (start, end) puts a zero-length section before a longer one starting at the same instant, so
        // the scan below only ever has to look forward.
        ids.sort_by(|&a, &b| {
            let (sa, ea) = span(a);
            let (sb, eb) = span(b);
            sa.total_cmp(&sb).then(ea.total_cmp(&eb))
        });
        for (k, &a) in ids.iter().enumerate() {
            let (_, end_a) = span(a);
            for &b in &ids[k + 1..] {
                let (start_b, _) = span(b);
                if start_b >= end_a {
                    break;
                }
                // start_a <= start_b < end_a; with start_b < end_b (or a non-empty a) they share time.
                let (start_a, _) = span(a);
                let (_, end_b) = span(b);
                if start_a < end_b {
                    overlapping[a] = true;
                    overlapping[b] = true;
                }
            }
        }
    }
    overlapping
}

/// Waiting-time statistics per node (entries with non-finite times are skipped; a negative wait, which only a
/// broken clock could produce, counts as zero).
pub(crate) fn latency_stats(entries: &[CsEntry]) -> BTreeMap<u16, LatencyStats> {
    let mut waits: BTreeMap<u16, Vec<f64>> = BTreeMap::new();
    for e in entries.iter().filter(|e| entry_is_finite(e)) {
        waits.entry(e.node).or_default().push((e.enter_ms - e.request_ms).max(0.0));
    }
    waits
        .into_iter()
        .filter_map(|(node, mut w)| {
            w.sort_by(f64::total_cmp);
            let count = w.len();
            let max_ms = *w.last()?;
            // Nearest rank: ceil(0.99 n), 1-based.
            let rank = (count * 99).div_ceil(100).max(1);
            let p99_ms = w.get(rank - 1).copied().unwrap_or(max_ms);
            let mean_ms = w.iter().sum::<f64>() / count as f64;
            Some((node, LatencyStats { count, mean_ms, p99_ms, max_ms }))
        })
        .collect()
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// Draws into a fresh white [`WIDTH`]×[`HEIGHT`] SVG and returns its text.
fn render(draw: impl FnOnce(&Area<'_>) -> Result<(), ChartError>) -> Result<String, ChartError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        draw(&root)?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

/// Puts the title on top and splits the rest into the plot (left) and the legend panel (right).
fn layout<'a>(root: &Area<'a>, title: &str, colour: RGBColor) -> Result<(Area<'a>, Area<'a>), ChartError> {
    let body = root
        .titled(title, (FONT, TITLE_SIZE).into_font().style(FontStyle::Bold).color(&colour))
        .map_err(draw_err)?;
    Ok(body.split_horizontally(WIDTH - LEGEND_WIDTH))
}

/// What a legend entry shows next to its label.
enum Swatch {
    /// A filled square (bars).
    Block(RGBColor),
    /// A thin bar (a line; drawn as a rectangle so only data lines are `<polyline>`s).
    Line(RGBColor),
    /// A thin bar with a dot (a line series with markers).
    LineMarker(RGBColor),
    /// Two short bars (a dashed line).
    Dashed(RGBColor),
    /// No swatch (a note).
    Empty,
}

/// Draws a legend: one swatch and label per row, top-down, in the panel `area`.
fn draw_legend(area: &Area<'_>, items: &[(String, Swatch)]) -> Result<(), ChartError> {
    const ROW: i32 = 24;
    const TOP: i32 = 30;
    const X0: i32 = 6;
    const X1: i32 = 34;
    if items.is_empty() {
        return Ok(());
    }
    let style = TextStyle::from((FONT, LEGEND_SIZE).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    let height = TOP + ROW * items.len() as i32;
    area.draw(&Rectangle::new([(0, TOP - ROW / 2 - 6), (LEGEND_WIDTH as i32 - 8, height - 6)], BOLD_GRID))
        .map_err(draw_err)?;
    for (k, (label, swatch)) in items.iter().enumerate() {
        let y = TOP + ROW * k as i32;
        match swatch {
            Swatch::Block(c) => area.draw(&Rectangle::new([(X0 + 6, y - 7), (X0 + 20, y + 7)], c.filled())),
            Swatch::Line(c) => area.draw(&Rectangle::new([(X0, y - 1), (X1 - 4, y + 1)], c.filled())),
            Swatch::LineMarker(c) => area
                .draw(&Rectangle::new([(X0, y - 1), (X1 - 4, y + 1)], c.filled()))
                .and_then(|()| area.draw(&Circle::new((X0 + 12, y), 4, c.filled()))),
            Swatch::Dashed(c) => area
                .draw(&Rectangle::new([(X0, y - 1), (X0 + 10, y + 1)], c.filled()))
                .and_then(|()| area.draw(&Rectangle::new([(X0 + 16, y - 1), (X1 - 4, y + 1)], c.filled()))),
            Swatch::Empty => Ok(()),
        }
        .map_err(draw_err)?;
        area.draw(&Text::new(label.as_str(), (X1 + 4, y), style.clone())).map_err(draw_err)?;
    }
    Ok(())
}

/// A "no data" note in the middle of an empty plot.
fn draw_no_data(area: &Area<'_>) -> Result<(), ChartError> {
    let (w, h) = area.dim_in_pixel();
    let style = TextStyle::from((FONT, AXIS_DESC_SIZE).into_font()).pos(Pos::new(HPos::Center, VPos::Center));
    area.draw(&Text::new("no data", (w as i32 / 2, h as i32 / 2), style)).map_err(draw_err)
}

/// A linear f64 axis with exactly the tick marks given (plotters' own `with_key_points` over an f64 range loses
/// the label formatter support, so this small axis stands in for it).
struct TickAxis {
    range: std::ops::Range<f64>,
    ticks: Vec<f64>,
}

impl Ranged for TickAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let width = self.range.end - self.range.start;
        let frac = if width > 0.0 { (value - self.range.start) / width } else { 0.0 };
        // `as` saturates, so a value far outside the range cannot overflow.
        limit.0 + (f64::from(limit.1 - limit.0) * frac).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // Ticks are bold points only: no light grid lines between them.
        if hint.weight().allow_light_points() { Vec::new() } else { self.ticks.clone() }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.range.clone()
    }
}

/// Key points 0, 1, …, n−1 on a category axis from −0.5 to n−0.5 (one slot per category).
fn category_axis(n: usize) -> TickAxis {
    let n = n.max(1);
    TickAxis { range: -0.5..n as f64 - 0.5, ticks: (0..n).map(|i| i as f64).collect() }
}

/// A tick label with as many decimals as an axis reaching `max` needs (none from 10 up).
fn tick_label(v: f64, max: f64) -> String {
    if max >= 10.0 { format!("{v:.0}") } else { format!("{v:.1}") }
}

/// The category a key point of [`category_axis`] stands for; with `step` > 1 only every `step`-th category (by
/// `rank(i)`) is labelled, so labels of many categories do not run into each other.
fn category_label<T: std::fmt::Display>(
    names: &[T],
    v: f64,
    step: usize,
    rank: impl Fn(usize) -> usize,
) -> String {
    let i = v.round();
    if i >= 0.0 && (i as usize) < names.len() && (v - i).abs() < 1e-6 && rank(i as usize) % step.max(1) == 0 {
        names[i as usize].to_string()
    } else {
        String::new()
    }
}

/// Categories along x (node labels like "node 12" are ~60 px wide) that fit without overlapping.
const MAX_X_LABELS: usize = 12;
/// Rows along y (labels ~20 px high) that fit without overlapping.
const MAX_Y_LABELS: usize = 18;
/// Nodes listed one by one in a legend; more are summarised in one line (their colours repeat anyway).
const MAX_LEGEND_NODES: usize = 12;

/// Label every `step`-th of `n` categories so that at most `max` labels are drawn.
fn label_step(n: usize, max: usize) -> usize {
    n.div_ceil(max.max(1)).max(1)
}

/// Critical-section occupancy per node over time (the experiment's Gantt chart).
///
/// x: ms since the first request; one row per node (ascending node id, top-down). Each entry is one bar from enter
/// to exit (at least ~2 px wide, so zero-length sections stay visible), filled with its node's colour, or with
/// [`WARNING_COLOUR`] if it overlaps another entry of the same lock (see `overlaps`); then the title gets
/// " — OVERLAP!". A thin grey line marks the request→enter wait. Entries with non-finite times are not drawn.
pub fn gantt(entries: &[CsEntry], title: &str) -> Result<String, ChartError> {
    let flags = overlaps(entries);
    let shown: Vec<(&CsEntry, bool)> =
        entries.iter().zip(flags).filter(|(e, _)| entry_is_finite(e)).collect();
    let any_overlap = shown.iter().any(|(_, o)| *o);
    let nodes: Vec<u16> = shown.iter().map(|(e, _)| e.node).collect::<BTreeSet<_>>().into_iter().collect();
    let rank: BTreeMap<u16, usize> = nodes.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let t0 = shown.iter().map(|(e, _)| e.request_ms.min(e.enter_ms)).fold(f64::INFINITY, f64::min);
    let t1 = shown.iter().map(|(e, _)| e.exit_ms.max(e.enter_ms)).fold(f64::NEG_INFINITY, f64::max);
    let span = if shown.is_empty() { 1.0 } else { (t1 - t0).max(1.0) };
    // ~1/300 of the axis is about 2 px on the plot: visible, and still short next to any real section.
    let min_width = span / 300.0;
    let x_max = span * 1.02 + min_width;
    let names: Vec<String> = nodes.iter().map(|n| format!("node {n}")).collect();
    // Row of a node: the first node on top.
    let row = |node: u16| (nodes.len() - 1 - rank.get(&node).copied().unwrap_or(0)) as f64;
    let full_title = if any_overlap { format!("{title} — OVERLAP!") } else { title.to_string() };

    render(|root| {
        let (plot, legend) = layout(root, &full_title, if any_overlap { WARNING_COLOUR } else { BLACK })?;
        let mut chart = ChartBuilder::on(&plot)
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(0.0..x_max, category_axis(nodes.len()))
            .map_err(draw_err)?;
        // Row labels read bottom-up, so map the key point back to the node of that row.
        let reversed: Vec<&String> = names.iter().rev().collect();
        let step = label_step(reversed.len(), MAX_Y_LABELS);
        let last = reversed.len().saturating_sub(1);
        let y_fmt = |v: &f64| category_label(&reversed, *v, step, |i| last - i);
        let x_fmt = |v: &f64| format!("{v:.0}");
        house_mesh(&mut chart.configure_mesh())
            .x_desc("time since the first request (ms)")
            .y_desc("node")
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .disable_y_mesh()
            .draw()
            .map_err(draw_err)?;
        if shown.is_empty() {
            return draw_no_data(&plot);
        }
        chart
            .draw_series(shown.iter().filter(|(e, _)| e.enter_ms > e.request_ms).map(|(e, _)| {
                let y = row(e.node);
                PathElement::new(
                    vec![(e.request_ms - t0, y), (e.enter_ms - t0, y)],
                    WAIT_COLOUR.stroke_width(1),
                )
            }))
            .map_err(draw_err)?;
        chart
            .draw_series(shown.iter().map(|(e, overlapping)| {
                let y = row(e.node);
                let start = e.enter_ms - t0;
                let end = (e.exit_ms - t0).max(start + min_width);
                let colour = if *overlapping {
                    WARNING_COLOUR
                } else {
                    palette(rank.get(&e.node).copied().unwrap_or(0))
                };
                Rectangle::new([(start, y - 0.32), (end, y + 0.32)], colour.mix(DATA_OPACITY).filled())
            }))
            .map_err(draw_err)?;
        let listed = if names.len() > MAX_LEGEND_NODES { MAX_LEGEND_NODES - 2 } else { names.len() };
        let mut items: Vec<(String, Swatch)> = names
            .iter()
            .take(listed)
            .enumerate()
            .map(|(i, name)| (name.clone(), Swatch::Block(palette(i))))
            .collect();
        if listed < names.len() {
            items.push((format!("… {} more nodes", names.len() - listed), Swatch::Empty));
        }
        items.push(("waiting (request → enter)".into(), Swatch::Line(WAIT_COLOUR)));
        if any_overlap {
            items.push(("OVERLAP (same lock)".into(), Swatch::Block(WARNING_COLOUR)));
        }
        draw_legend(&legend, &items)
    })
}

/// Waiting latency (enter − request) per node: mean and p99 bars side by side, y in ms (see `latency_stats`).
pub fn latency(entries: &[CsEntry], title: &str) -> Result<String, ChartError> {
    let stats = latency_stats(entries);
    let names: Vec<String> = stats.keys().map(|n| format!("node {n}")).collect();
    let top = stats.values().map(|s| s.p99_ms.max(s.mean_ms)).fold(0.0, f64::max);
    let y_max = if top > 0.0 { top * 1.15 } else { 1.0 };
    const MEAN: RGBColor = PALETTE[0];
    const P99: RGBColor = PALETTE[1];

    render(|root| {
        let (plot, legend) = layout(root, title, BLACK)?;
        let mut chart = ChartBuilder::on(&plot)
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(category_axis(stats.len()), 0.0..y_max)
            .map_err(draw_err)?;
        let step = label_step(names.len(), MAX_X_LABELS);
        let x_fmt = |v: &f64| category_label(&names, *v, step, |i| i);
        let y_fmt = |v: &f64| tick_label(*v, y_max);
        house_mesh(&mut chart.configure_mesh())
            .x_desc("node")
            .y_desc("wait, enter − request (ms)")
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .disable_x_mesh()
            .draw()
            .map_err(draw_err)?;
        if stats.is_empty() {
            return draw_no_data(&plot);
        }
        let value_style =
            TextStyle::from((FONT, LABEL_SIZE).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
        for (i, s) in stats.values().enumerate() {
            let x = i as f64;
            for (x0, x1, v, c) in [(x - 0.38, x - 0.02, s.mean_ms, MEAN), (x + 0.02, x + 0.38, s.p99_ms, P99)]
            {
                chart
                    .draw_series([Rectangle::new([(x0, 0.0), (x1, v)], c.mix(DATA_OPACITY).filled())])
                    .map_err(draw_err)?;
                // Values over the bars only while they fit side by side.
                if stats.len() <= MAX_X_LABELS / 2 {
                    chart
                        .draw_series([Text::new(
                            format!("{v:.1}"),
                            ((x0 + x1) / 2.0, v),
                            value_style.clone(),
                        )])
                        .map_err(draw_err)?;
                }
            }
        }
        draw_legend(
            &legend,
            &[("mean".into(), Swatch::Block(MEAN)), ("p99 (nearest rank)".into(), Swatch::Block(P99))],
        )
    })
}

/// Message counts per node (outer key) and message type (inner key), stacked by type with the total on top.
/// Types get palette colours in name order; zero counts draw nothing.
pub fn messages(per_node: &BTreeMap<u16, BTreeMap<String, u64>>, title: &str) -> Result<String, ChartError> {
    let types: Vec<&str> = per_node
        .values()
        .flat_map(|m| m.keys().map(String::as_str))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let names: Vec<String> = per_node.keys().map(|n| format!("node {n}")).collect();
    let total = |m: &BTreeMap<String, u64>| m.values().fold(0u64, |a, v| a.saturating_add(*v));
    let top = per_node.values().map(total).max().unwrap_or(0);
    let y_max = if top > 0 { top as f64 * 1.12 } else { 1.0 };

    render(|root| {
        let (plot, legend) = layout(root, title, BLACK)?;
        let mut chart = ChartBuilder::on(&plot)
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(80)
            .build_cartesian_2d(category_axis(per_node.len()), 0.0..y_max)
            .map_err(draw_err)?;
        let step = label_step(names.len(), MAX_X_LABELS);
        let x_fmt = |v: &f64| category_label(&names, *v, step, |i| i);
        let y_fmt = |v: &f64| format!("{v:.0}");
        house_mesh(&mut chart.configure_mesh())
            .x_desc("node")
            .y_desc("messages (count)")
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .disable_x_mesh()
            .draw()
            .map_err(draw_err)?;
        if per_node.is_empty() {
            return draw_no_data(&plot);
        }
        let value_style =
            TextStyle::from((FONT, LABEL_SIZE).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
        for (i, counts) in per_node.values().enumerate() {
            let x = i as f64;
            let mut base = 0.0;
            for (t, kind) in types.iter().enumerate() {
                let n = counts.get(*kind).copied().unwrap_or(0);
                if n == 0 {
                    continue;
                }
                let top = base + n as f64;
                chart
                    .draw_series([Rectangle::new(
                        [(x - 0.35, base), (x + 0.35, top)],
                        palette(t).mix(DATA_OPACITY).filled(),
                    )])
                    .map_err(draw_err)?;
                base = top;
            }
            // Totals over the bars only while they fit side by side.
            if per_node.len() <= MAX_X_LABELS {
                chart
                    .draw_series([Text::new(total(counts).to_string(), (x, base), value_style.clone())])
                    .map_err(draw_err)?;
            }
        }
        // Top-down like the stack: the last type is on top.
        let items: Vec<(String, Swatch)> = types
            .iter()
            .enumerate()
            .rev()
            .map(|(t, kind)| (kind.to_string(), Swatch::Block(palette(t))))
            .collect();
        draw_legend(&legend, &items)
    })
}

/// The value a sweep point contributes to `metric`, `None` when undefined (no entries, non-finite time).
fn metric_value(p: &SweepPoint, metric: SweepMetric) -> Option<f64> {
    match metric {
        SweepMetric::ExecutionTime => {
            (p.execution_ms.is_finite() && p.execution_ms >= 0.0).then_some(p.execution_ms / 1000.0)
        }
        SweepMetric::MessagesPerEntry => p.messages_per_entry(),
    }
}

/// A metric against the cluster size N: one line with a marker per N for each algorithm (colours by algorithm
/// name order). Several runs of the same algorithm and N are averaged into one point. For
/// [`SweepMetric::MessagesPerEntry`], dashed reference lines 3(N−1) ("Lamport 3(N−1)") and 2(N−1)
/// ("Ricart–Agrawala 2(N−1)") are drawn too.
pub fn sweep(points: &[SweepPoint], metric: SweepMetric, title: &str) -> Result<String, ChartError> {
    let mut sums: BTreeMap<&str, BTreeMap<u32, (f64, u32)>> = BTreeMap::new();
    for p in points {
        if let Some(v) = metric_value(p, metric) {
            let slot = sums.entry(p.algorithm.as_str()).or_default().entry(p.nodes).or_insert((0.0, 0));
            slot.0 += v;
            slot.1 += 1;
        }
    }
    let series: Vec<(&str, Vec<(f64, f64)>)> = sums
        .into_iter()
        .map(|(algo, by_n)| {
            (algo, by_n.into_iter().map(|(n, (sum, count))| (f64::from(n), sum / f64::from(count))).collect())
        })
        .collect();
    let ns: BTreeSet<u32> = points.iter().map(|p| p.nodes).collect();
    let n_min = ns.first().copied().unwrap_or(1);
    let n_max = ns.last().copied().unwrap_or(1);
    let reference = metric == SweepMetric::MessagesPerEntry;
    // The reference lines span the measured N (or a unit around a single N).
    let (ref_lo, ref_hi) = if n_min < n_max {
        (f64::from(n_min), f64::from(n_max))
    } else {
        (f64::from(n_min) - 0.5, f64::from(n_min) + 0.5)
    };
    let refs: Vec<(String, RGBColor, u32, f64)> = if reference {
        vec![
            ("Lamport 3(N−1)".to_string(), LAMPORT_REF_COLOUR, 12, 3.0),
            ("Ricart–Agrawala 2(N−1)".to_string(), RA_REF_COLOUR, 6, 2.0),
        ]
    } else {
        Vec::new()
    };
    let mut top = series.iter().flat_map(|(_, pts)| pts.iter().map(|p| p.1)).fold(0.0, f64::max);
    for (_, _, _, k) in &refs {
        top = top.max(k * (ref_hi - 1.0));
    }
    let y_max = if top > 0.0 { top * 1.12 } else { 1.0 };
    let x_lo = f64::from(n_min) - 0.6;
    let x_hi = f64::from(n_max) + 0.6;
    let keys: Vec<f64> = ns.iter().map(|n| f64::from(*n)).collect();
    let y_desc = match metric {
        SweepMetric::ExecutionTime => "execution time (s)",
        SweepMetric::MessagesPerEntry => "messages per CS entry",
    };

    render(|root| {
        let (plot, legend) = layout(root, title, BLACK)?;
        let mut chart = ChartBuilder::on(&plot)
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(TickAxis { range: x_lo..x_hi, ticks: keys.clone() }, 0.0..y_max)
            .map_err(draw_err)?;
        let x_fmt = |v: &f64| format!("{v:.0}");
        let y_fmt = |v: &f64| tick_label(*v, y_max);
        house_mesh(&mut chart.configure_mesh())
            .x_desc("nodes (N)")
            .y_desc(y_desc)
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .draw()
            .map_err(draw_err)?;
        if series.is_empty() {
            return draw_no_data(&plot);
        }
        for (i, (_, pts)) in series.iter().enumerate() {
            let colour = palette(i);
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), colour.stroke_width(2)))
                .map_err(draw_err)?;
            chart
                .draw_series(pts.iter().map(|p| Circle::new(*p, 4, colour.mix(DATA_OPACITY).filled())))
                .map_err(draw_err)?;
        }
        // The textbook lines go on top: where a measured line follows them exactly (Lamport is 3(N−1)), the
        // dashes must stay visible over it.
        for (_, colour, dash, k) in &refs {
            let line = vec![(ref_lo, k * (ref_lo - 1.0)), (ref_hi, k * (ref_hi - 1.0))];
            chart
                .draw_series(DashedLineSeries::new(line, *dash as i32, 6, colour.stroke_width(2)))
                .map_err(draw_err)?;
        }
        let mut items: Vec<(String, Swatch)> = series
            .iter()
            .enumerate()
            .map(|(i, (algo, _))| (algo.to_string(), Swatch::LineMarker(palette(i))))
            .collect();
        items.extend(refs.iter().map(|(label, colour, _, _)| (label.clone(), Swatch::Dashed(*colour))));
        draw_legend(&legend, &items)
    })
}

/// The sweep as CSV, one row per point in input order: `algorithm,nodes,entries,messages,messages_per_entry,
/// execution_ms,entries_per_s`. Undefined ratios (no entries, no time) are empty fields.
pub fn sweep_csv(points: &[SweepPoint]) -> String {
    let mut out =
        String::from("algorithm,nodes,entries,messages,messages_per_entry,execution_ms,entries_per_s\n");
    let opt = |v: Option<f64>| v.map(|v| format!("{v:.3}")).unwrap_or_default();
    for p in points {
        // `write!` to a String cannot fail.
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{}",
            csv_field(&p.algorithm),
            p.nodes,
            p.entries,
            p.messages,
            opt(p.messages_per_entry()),
            opt(p.execution_ms.is_finite().then_some(p.execution_ms)),
            opt(p.entries_per_s()),
        );
    }
    out
}

/// Quotes a CSV field when it needs it (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A critical section of `node` on `lock`, times in ms from an arbitrary UNIX origin.
    fn cs(node: u16, lock: &str, request: f64, enter: f64, exit: f64) -> CsEntry {
        let base = 1_700_000_000_000.0;
        CsEntry {
            node,
            lock: lock.into(),
            iteration: 0,
            fencing_token: 0,
            lamport_clock_at_enter: 0,
            request_ms: base + request,
            enter_ms: base + enter,
            exit_ms: base + exit,
            counter_read: 0,
            counter_written: 1,
        }
    }

    /// Three nodes taking turns on one lock, five sections each, never overlapping.
    fn serial_history() -> Vec<CsEntry> {
        (0..15u32)
            .map(|k| {
                let start = f64::from(k) * 30.0;
                cs(1 + (k % 3) as u16, "counter", start - 12.0, start, start + 20.0)
            })
            .collect()
    }

    /// plotters writes colours as upper-case `#RRGGBB`.
    fn hex(c: RGBColor) -> String {
        format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
    }

    /// Parses the SVG (panics with the parser's message if it is not well-formed XML).
    fn parse(svg: &str) -> roxmltree::Document<'_> {
        roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("not well-formed XML: {e}"))
    }

    /// Data bars (or markers) of colour `c`: elements `tag` with that fill and [`DATA_OPACITY`].
    fn data_marks(doc: &roxmltree::Document<'_>, tag: &str, c: RGBColor) -> usize {
        let fill = hex(c);
        doc.descendants()
            .filter(|n| n.has_tag_name(tag))
            .filter(|n| n.attribute("fill").is_some_and(|f| f.eq_ignore_ascii_case(&fill)))
            .filter(|n| n.attribute("opacity") == Some(DATA_OPACITY.to_string().as_str()))
            .count()
    }

    /// Polylines stroked in colour `c`.
    fn polylines(doc: &roxmltree::Document<'_>, c: RGBColor) -> usize {
        let stroke = hex(c);
        doc.descendants()
            .filter(|n| n.has_tag_name("polyline"))
            .filter(|n| n.attribute("stroke").is_some_and(|s| s.eq_ignore_ascii_case(&stroke)))
            .count()
    }

    /// All the text of the SVG's `<text>` elements.
    fn texts(doc: &roxmltree::Document<'_>) -> Vec<String> {
        doc.descendants()
            .filter(|n| n.has_tag_name("text"))
            .map(|n| n.text().unwrap_or_default().trim().to_string())
            .collect()
    }

    #[test]
    fn gantt_draws_one_bar_per_entry_in_its_nodes_colour() {
        let entries = serial_history();
        let svg = gantt(&entries, "serial").unwrap();
        let doc = parse(&svg);
        for (rank, node) in [1u16, 2, 3].into_iter().enumerate() {
            let expected = entries.iter().filter(|e| e.node == node).count();
            assert_eq!(data_marks(&doc, "rect", palette(rank)), expected, "node {node}");
        }
        let all: usize = PALETTE.iter().map(|c| data_marks(&doc, "rect", *c)).sum();
        assert_eq!(all, entries.len());
        assert_eq!(data_marks(&doc, "rect", WARNING_COLOUR), 0);
        assert!(texts(&doc).iter().all(|t| !t.contains("OVERLAP")));
        // One waiting line per entry (each requested before it entered).
        assert_eq!(polylines(&doc, WAIT_COLOUR), entries.len());
    }

    #[test]
    fn gantt_marks_overlapping_sections_of_the_same_lock_in_red() {
        let mut entries = serial_history();
        // Node 2 enters while node 1 (first entry, 0..20) still holds the lock.
        entries.push(cs(2, "counter", 0.0, 10.0, 15.0));
        // The same times on another lock are no violation.
        entries.push(cs(3, "other", 0.0, 5.0, 12.0));
        let svg = gantt(&entries, "broken").unwrap();
        let doc = parse(&svg);
        assert_eq!(data_marks(&doc, "rect", WARNING_COLOUR), 2);
        let coloured: usize = PALETTE.iter().map(|c| data_marks(&doc, "rect", *c)).sum();
        assert_eq!(coloured + 2, entries.len(), "still one bar per entry");
        let texts = texts(&doc);
        assert!(texts.iter().any(|t| t == "broken — OVERLAP!"), "{texts:?}");
    }

    #[test]
    fn gantt_gives_a_zero_length_section_a_visible_width() {
        let svg = gantt(&[cs(1, "l", 0.0, 50.0, 50.0), cs(2, "l", 0.0, 60.0, 100.0)], "t").unwrap();
        let doc = parse(&svg);
        let fill = hex(palette(0));
        let bar = doc
            .descendants()
            .find(|n| {
                n.has_tag_name("rect")
                    && n.attribute("fill") == Some(fill.as_str())
                    && n.attribute("opacity") == Some(DATA_OPACITY.to_string().as_str())
            })
            .unwrap();
        let width: i32 = bar.attribute("width").unwrap().parse().unwrap();
        assert!(width >= 1, "width {width}");
    }

    #[test]
    fn many_nodes_keep_one_bar_per_entry_but_thin_out_labels() {
        let entries: Vec<CsEntry> =
            (0..40u16).map(|n| cs(n, "l", 0.0, f64::from(n) * 10.0, f64::from(n) * 10.0 + 5.0)).collect();
        let doc_text = gantt(&entries, "40 nodes").unwrap();
        let doc = parse(&doc_text);
        let bars: usize = PALETTE.iter().map(|c| data_marks(&doc, "rect", *c)).sum();
        assert_eq!(bars, 40);
        let labels = texts(&doc);
        let node_labels = labels.iter().filter(|t| t.starts_with("node ")).count();
        assert!(node_labels <= MAX_Y_LABELS + MAX_LEGEND_NODES, "{node_labels} labels: {labels:?}");
        assert!(
            labels.iter().any(|t| t == "node 0") && labels.iter().any(|t| t == "… 30 more nodes"),
            "{labels:?}"
        );

        let per_node: BTreeMap<u16, BTreeMap<String, u64>> =
            (0..40u16).map(|n| (n, BTreeMap::from([("REQUEST".to_string(), 7u64)]))).collect();
        let doc_text = messages(&per_node, "m").unwrap();
        let doc = parse(&doc_text);
        assert_eq!(data_marks(&doc, "rect", palette(0)), 40);
        assert!(texts(&doc).iter().filter(|t| t.starts_with("node ")).count() <= MAX_X_LABELS);
    }

    #[test]
    fn overlap_needs_shared_time_on_the_same_lock() {
        let touching = [cs(1, "l", 0.0, 0.0, 10.0), cs(2, "l", 0.0, 10.0, 20.0)];
        assert_eq!(overlaps(&touching), vec![false, false]);
        // A long section containing two short ones overlaps both, the short ones not each other.
        let nested = [cs(1, "l", 0.0, 0.0, 100.0), cs(2, "l", 0.0, 10.0, 20.0), cs(3, "l", 0.0, 50.0, 60.0)];
        assert_eq!(overlaps(&nested), vec![true, true, true]);
        let chain = [cs(1, "l", 0.0, 0.0, 10.0), cs(2, "l", 0.0, 20.0, 30.0), cs(3, "l", 0.0, 25.0, 40.0)];
        assert_eq!(overlaps(&chain), vec![false, true, true]);
        // A zero-length section strictly inside another overlaps it; at its start it does not.
        let point = [cs(1, "l", 0.0, 0.0, 10.0), cs(2, "l", 0.0, 5.0, 5.0), cs(3, "l", 0.0, 0.0, 0.0)];
        assert_eq!(overlaps(&point), vec![true, true, false]);
        let other_lock = [cs(1, "a", 0.0, 0.0, 10.0), cs(2, "b", 0.0, 5.0, 15.0)];
        assert_eq!(overlaps(&other_lock), vec![false, false]);
        let nan = [cs(1, "l", 0.0, 0.0, 10.0), cs(2, "l", 0.0, f64::NAN, 5.0)];
        assert_eq!(overlaps(&nan), vec![false, false]);
    }

    #[test]
    fn latency_draws_mean_and_p99_per_node() {
        let entries = serial_history();
        let doc_text = latency(&entries, "latency").unwrap();
        let doc = parse(&doc_text);
        assert_eq!(data_marks(&doc, "rect", PALETTE[0]), 3, "one mean bar per node");
        assert_eq!(data_marks(&doc, "rect", PALETTE[1]), 3, "one p99 bar per node");
    }

    #[test]
    fn latency_stats_use_the_nearest_rank_p99() {
        let entries: Vec<CsEntry> =
            (1..=100).map(|w| cs(7, "l", 0.0, f64::from(w), f64::from(w) + 1.0)).collect();
        let stats = latency_stats(&entries);
        let s = stats[&7];
        assert_eq!(s.count, 100);
        assert_eq!(s.p99_ms, 99.0);
        assert_eq!(s.max_ms, 100.0);
        assert!((s.mean_ms - 50.5).abs() < 1e-9);
        let one = latency_stats(&[cs(1, "l", 0.0, 3.0, 4.0)]);
        assert_eq!(one[&1].p99_ms, 3.0);
    }

    #[test]
    fn messages_stack_one_segment_per_node_and_type() {
        let mut per_node: BTreeMap<u16, BTreeMap<String, u64>> = BTreeMap::new();
        for node in 1..=3u16 {
            let counts = per_node.entry(node).or_default();
            counts.insert("request".into(), 10 * u64::from(node));
            counts.insert("reply".into(), 10);
            // A zero count draws nothing.
            counts.insert("release".into(), if node == 2 { 0 } else { 5 });
        }
        let svg = messages(&per_node, "messages").unwrap();
        let doc = parse(&svg);
        // Types in name order: release, reply, request.
        assert_eq!(data_marks(&doc, "rect", palette(0)), 2);
        assert_eq!(data_marks(&doc, "rect", palette(1)), 3);
        assert_eq!(data_marks(&doc, "rect", palette(2)), 3);
        let texts = texts(&doc);
        for label in ["release", "reply", "request", "node 1", "node 3", "45"] {
            assert!(texts.iter().any(|t| t == label), "{label} missing in {texts:?}");
        }
    }

    fn sweep_points() -> Vec<SweepPoint> {
        let mut points = Vec::new();
        for (algorithm, per_entry) in [("lamport", 3u64), ("ricart-agrawala", 2), ("probable-owner", 1)] {
            for nodes in [3u32, 5, 7] {
                let entries = u64::from(nodes) * 10;
                let messages = entries * per_entry * u64::from(nodes - 1);
                points.push(SweepPoint {
                    algorithm: algorithm.into(),
                    nodes,
                    entries,
                    messages,
                    execution_ms: 1e3,
                });
            }
        }
        // A repeated run is averaged into the same point.
        points.push(SweepPoint {
            algorithm: "lamport".into(),
            nodes: 3,
            entries: 30,
            messages: 180,
            execution_ms: 2e3,
        });
        points
    }

    #[test]
    fn sweep_draws_one_line_per_algorithm_and_the_reference_lines() {
        let svg = sweep(&sweep_points(), SweepMetric::MessagesPerEntry, "messages per entry").unwrap();
        let doc = parse(&svg);
        // Algorithms in name order: lamport, probable-owner, ricart-agrawala.
        for rank in 0..3 {
            assert_eq!(polylines(&doc, palette(rank)), 1, "algorithm {rank}");
            assert_eq!(data_marks(&doc, "circle", palette(rank)), 3, "one marker per N, algorithm {rank}");
        }
        // Dashed: each reference line is drawn as several dashes, all of its colour.
        assert!(polylines(&doc, LAMPORT_REF_COLOUR) >= 2);
        assert!(polylines(&doc, RA_REF_COLOUR) >= 2);
        // On top: every dash comes after (is painted over) every measured line and marker.
        let order: Vec<RGBColor> = doc
            .descendants()
            .filter(|n| n.has_tag_name("polyline") || n.has_tag_name("circle"))
            .filter_map(|n| {
                let colour = n.attribute("stroke").or_else(|| n.attribute("fill"))?;
                (0..3)
                    .map(palette)
                    .chain([LAMPORT_REF_COLOUR, RA_REF_COLOUR])
                    .find(|c| colour.eq_ignore_ascii_case(&hex(*c)))
            })
            .collect();
        let first_dash = order.iter().position(|c| *c == LAMPORT_REF_COLOUR || *c == RA_REF_COLOUR);
        let last_measured = order.iter().rposition(|c| (0..3).map(palette).any(|p| p == *c));
        assert!(
            matches!((first_dash, last_measured), (Some(d), Some(m)) if d > m),
            "reference dashes must be drawn after the measured series: {first_dash:?} vs {last_measured:?}"
        );
        let labels = texts(&doc);
        for label in
            ["lamport", "probable-owner", "ricart-agrawala", "Lamport 3(N−1)", "Ricart–Agrawala 2(N−1)"]
        {
            assert!(labels.iter().any(|t| t == label), "{label} missing in {labels:?}");
        }

        let svg = sweep(&sweep_points(), SweepMetric::ExecutionTime, "time").unwrap();
        let doc = parse(&svg);
        for rank in 0..3 {
            assert_eq!(polylines(&doc, palette(rank)), 1);
        }
        assert_eq!(polylines(&doc, LAMPORT_REF_COLOUR) + polylines(&doc, RA_REF_COLOUR), 0);
        assert!(texts(&doc).iter().any(|t| t == "execution time (s)"));
    }

    #[test]
    fn sweep_csv_has_the_header_and_derived_columns() {
        let points = [
            SweepPoint {
                algorithm: "lamport".into(),
                nodes: 3,
                entries: 30,
                messages: 180,
                execution_ms: 1500.0,
            },
            SweepPoint { algorithm: "a,\"b\"".into(), nodes: 2, entries: 0, messages: 4, execution_ms: 0.0 },
        ];
        let csv = sweep_csv(&points);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "algorithm,nodes,entries,messages,messages_per_entry,execution_ms,entries_per_s"
        );
        assert_eq!(lines[1], "lamport,3,30,180,6.000,1500.000,20.000");
        assert_eq!(lines[2], "\"a,\"\"b\"\"\",2,0,4,,0.000,");
        assert_eq!(lines.len(), 3);
    }

    #[test]
    fn empty_inputs_give_valid_charts_saying_no_data() {
        let charts = [
            gantt(&[], "g").unwrap(),
            latency(&[], "l").unwrap(),
            messages(&BTreeMap::new(), "m").unwrap(),
            sweep(&[], SweepMetric::MessagesPerEntry, "s").unwrap(),
        ];
        for svg in &charts {
            let doc = parse(svg);
            assert!(texts(&doc).iter().any(|t| t == "no data"));
        }
    }

    #[test]
    fn titles_are_escaped_and_sizes_fixed() {
        let svg = gantt(&serial_history(), "a <b> & \"c\"").unwrap();
        let doc = parse(&svg);
        let root = doc.root_element();
        assert_eq!(root.attribute("width"), Some(WIDTH.to_string().as_str()));
        assert_eq!(root.attribute("height"), Some(HEIGHT.to_string().as_str()));
        assert!(texts(&doc).iter().any(|t| t == "a <b> & \"c\""));
    }

    #[test]
    fn write_svg_writes_the_file() {
        let dir = std::env::temp_dir().join(format!("dmutex-charts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("g.svg");
        let svg = gantt(&serial_history(), "g").unwrap();
        write_svg(&path, &svg).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), svg);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(write_svg(dir.join("missing/x.svg"), &svg), Err(ChartError::Write { .. })));
    }
}
