//! The pipeline chart as SVG (plotters' SVG backend: text as `<text>` elements, so no fonts or
//! system libraries are needed). Left: achieved against offered rate in the open-loop sweeps
//! (where it saturates). Right: latency percentiles against achieved throughput (the hockey
//! stick), on a log scale; closed-loop runs as stars, the in-process ceiling as a line.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::pipeline::{TARGET_RATIO, family, label};
use crate::report::Report;

const PERCENTILES: [(&str, RGBColor); 4] = [
    ("p50", RGBColor(31, 119, 180)),
    ("p90", RGBColor(44, 160, 44)),
    ("p99", RGBColor(255, 127, 14)),
    ("p99.9", RGBColor(214, 39, 40)),
];
const FAMILIES: [&str; 2] = ["http-predict", "nats"];
const FONT: &str = "sans-serif";

fn percentile(r: &Report, name: &str) -> f64 {
    let l = &r.latency_ms;
    let v = match name {
        "p50" => l.p50,
        "p90" => l.p90,
        "p99" => l.p99,
        _ => l.p999,
    };
    v.max(0.1)
}

/// The open-loop steps of one family, by offered rate.
fn sweep<'a>(runs: &'a [Report], fam: &str) -> Vec<(f64, &'a Report)> {
    let mut steps: Vec<(f64, &Report)> = runs
        .iter()
        .filter(|r| family(label(r)) == fam && r.mode == "open")
        .filter_map(|r| Some((r.rate?, r)))
        .collect();
    steps.sort_by(|a, b| a.0.total_cmp(&b.0));
    steps
}

fn closed(runs: &[Report]) -> impl Iterator<Item = &Report> {
    runs.iter().filter(|r| r.mode == "closed")
}

/// The chart of `runs` (the noop runs left out) as an SVG document.
pub fn svg(runs: &[Report], ceiling: f64) -> anyhow::Result<String> {
    let runs: Vec<Report> = runs
        .iter()
        .filter(|r| !label(r).starts_with("noop"))
        .cloned()
        .collect();
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (1400, 560)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled("clothesline end to end on one machine", (FONT, 20))?;
        let (left, right) = root.split_horizontally(560);
        throughput(&left, &runs, ceiling)?;
        latency(&right, &runs, ceiling)?;
        root.present()?;
    }
    Ok(out)
}

/// A series of one family: solid for HTTP, dashed for NATS (as the Python chart had them).
fn draw_line<C: CoordTranslate<From = (f64, f64)>>(
    chart: &mut ChartContext<'_, SVGBackend<'_>, C>,
    fam: &str,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    label: String,
) -> anyhow::Result<()> {
    let style = color.stroke_width(2);
    let series = if fam == "nats" {
        chart.draw_series(DashedLineSeries::new(points, 6, 4, style))?
    } else {
        chart.draw_series(LineSeries::new(points, style))?
    };
    series
        .label(label)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
    Ok(())
}

fn throughput(
    area: &DrawingArea<SVGBackend, Shift>,
    runs: &[Report],
    ceiling: f64,
) -> anyhow::Result<()> {
    let top_rate = FAMILIES
        .iter()
        .flat_map(|f| sweep(runs, f))
        .map(|(rate, _)| rate)
        .fold(0.0, f64::max);
    let top = runs
        .iter()
        .map(|r| r.ok_throughput_rps)
        .fold(top_rate.max(ceiling), f64::max)
        * 1.1
        + 1.0;
    let mut chart = ChartBuilder::on(area)
        .caption("throughput vs offered load", (FONT, 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..(top_rate * 1.05 + 1.0), 0.0..top)?;
    chart
        .configure_mesh()
        .light_line_style(RGBColor(245, 245, 245))
        .x_desc("offered rate (requests/s, open loop)")
        .y_desc("achieved throughput (successful answers/s)")
        .draw()?;
    for fam in FAMILIES {
        let points: Vec<(f64, f64)> = sweep(runs, fam)
            .iter()
            .map(|(rate, r)| (*rate, r.ok_throughput_rps))
            .collect();
        if points.is_empty() {
            continue;
        }
        draw_line(
            &mut chart,
            fam,
            points.clone(),
            BLACK,
            format!("{fam} open loop"),
        )?;
        chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, BLACK.filled())))?;
    }
    for (i, r) in closed(runs).enumerate() {
        let color = Palette99::pick(i + 5).to_rgba();
        let y = r.ok_throughput_rps;
        chart
            .draw_series(LineSeries::new(
                [(0.0, y), (top_rate * 1.05 + 1.0, y)],
                color,
            ))?
            .label(format!(
                "{} closed loop, {} in flight",
                family(label(r)),
                r.concurrency.unwrap_or(0)
            ))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
    }
    let grey = RGBColor(200, 200, 200);
    chart
        .draw_series(LineSeries::new([(0.0, 0.0), (top_rate, top_rate)], grey))?
        .label("achieved = offered")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], grey));
    if ceiling > 0.0 {
        let x_end = top_rate * 1.05 + 1.0;
        for (y, text, color) in ceiling_lines(ceiling) {
            chart
                .draw_series(LineSeries::new([(0.0, y), (x_end, y)], color))?
                .label(text)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
        }
    }
    legend(&mut chart)
}

fn ceiling_lines(ceiling: f64) -> [(f64, String, RGBColor); 2] {
    [
        (
            ceiling,
            format!("in-process model ceiling {ceiling:.0}/s"),
            BLACK,
        ),
        (
            ceiling * TARGET_RATIO,
            format!("{:.0}% of the ceiling", TARGET_RATIO * 100.0),
            RGBColor(128, 128, 128),
        ),
    ]
}

fn legend<'a, C: CoordTranslate>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, C>,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font((FONT, 11))
        .draw()?;
    Ok(())
}

fn latency(
    area: &DrawingArea<SVGBackend, Shift>,
    runs: &[Report],
    ceiling: f64,
) -> anyhow::Result<()> {
    let x_top = runs
        .iter()
        .map(|r| r.ok_throughput_rps)
        .fold(ceiling, f64::max)
        * 1.1
        + 1.0;
    let y_top = runs
        .iter()
        .map(|r| percentile(r, "p99.9").max(r.latency_ms.max))
        .fold(1.0, f64::max)
        * 2.0;
    let mut chart = ChartBuilder::on(area)
        .caption("latency percentiles vs throughput", (FONT, 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_top, (0.1..y_top).log_scale())?;
    chart
        .configure_mesh()
        .light_line_style(RGBColor(245, 245, 245))
        .x_desc("achieved throughput (successful answers/s)")
        .y_desc("latency (ms, from the intended send time)")
        .draw()?;
    for fam in FAMILIES {
        let steps = sweep(runs, fam);
        if steps.is_empty() {
            continue;
        }
        for (name, color) in PERCENTILES {
            let points: Vec<(f64, f64)> = steps
                .iter()
                .map(|(_, r)| (r.ok_throughput_rps, percentile(r, name)))
                .collect();
            draw_line(
                &mut chart,
                fam,
                points.clone(),
                color,
                format!("{fam} {name}"),
            )?;
            chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
        }
        chart.draw_series(steps.iter().map(|(rate, r)| {
            Text::new(
                format!("{}/s", super::md::g(*rate)),
                (r.ok_throughput_rps, percentile(r, "p99.9") * 1.15),
                (FONT, 9).into_font().color(&RGBColor(128, 128, 128)),
            )
        }))?;
    }
    for (i, r) in closed(runs).enumerate() {
        let color = Palette99::pick(i + 5).to_rgba();
        let point = (r.ok_throughput_rps, percentile(r, "p99"));
        chart
            .draw_series([TriangleMarker::new(point, 8, color.filled())])?
            .label(format!(
                "{} closed loop, {} in flight: p99",
                family(label(r)),
                r.concurrency.unwrap_or(0)
            ))
            .legend(move |(x, y)| TriangleMarker::new((x + 10, y), 6, color.filled()));
    }
    if ceiling > 0.0 {
        for (x, text, color) in ceiling_lines(ceiling) {
            chart
                .draw_series(LineSeries::new([(x, 0.1), (x, y_top)], color))?
                .label(text)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
        }
    }
    legend(&mut chart)
}
