//! `privgw bench plot`: SVG figures from the JSON tables in the results folder (plotters, SVG
//! backend: no font files), and with `--markdown` every table as Markdown on stdout with links
//! to the figures (what `scripts/benchmarks.sh` puts into BENCHMARKS.md). A figure whose table
//! is missing is skipped, and the tool says so.

use std::path::{Path, PathBuf};

use clap::Args;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

use crate::cli::CliResult;
use crate::cli::results::{Cell, Table};

#[derive(Args, Debug, Clone)]
pub struct PlotArgs {
    /// Where the SVG files go (default: the results folder).
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Also print every table of the results folder as Markdown, with the figures linked as
    /// `<link-prefix>/<name>.svg`.
    #[arg(long)]
    pub markdown: bool,
    /// Path prefix of the figure links in the Markdown (default: the `--images` folder).
    #[arg(long)]
    pub link_prefix: Option<String>,
}

const PRIVGW: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const LIBCOAP: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
const THIRD: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);

/// The tables the figures and the Markdown are made from, in report order.
const KNOWN: [&str; 8] = [
    "group",
    "register",
    "front",
    "handshakes",
    "proxy",
    "proxy_nstart16",
    "soak",
    "soak_summary",
];

pub fn run(args: PlotArgs, out: &Path) -> CliResult<()> {
    let images = args.images.clone().unwrap_or_else(|| out.to_path_buf());
    std::fs::create_dir_all(&images)?;
    let made = draw_all(out, &images)?;
    if args.markdown {
        let prefix = args
            .link_prefix
            .clone()
            .unwrap_or_else(|| images.display().to_string());
        print!("{}", markdown(out, &made, &prefix)?);
    }
    Ok(())
}

/// One figure drawn: its file stem and the table it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    pub file: String,
    pub table: String,
    pub title: String,
}

/// Draws every figure whose table exists; says on stderr which were skipped.
pub fn draw_all(results: &Path, images: &Path) -> CliResult<Vec<Figure>> {
    let mut made = Vec::new();
    let load = |name: &str| match Table::load(results, name) {
        Ok(t) => Some(t),
        Err(e) => {
            eprintln!(
                "bench plot: no {name} table in {} ({e}); its figures are skipped",
                results.display()
            );
            None
        }
    };
    let mut add = |file: &str, table: &str, title: &str, drawn: CliResult<bool>| -> CliResult<()> {
        if drawn? {
            eprintln!(
                "bench plot: {}",
                images.join(format!("{file}.svg")).display()
            );
            made.push(Figure {
                file: file.into(),
                table: table.into(),
                title: title.into(),
            });
        } else {
            eprintln!("bench plot: {table} has no rows for {file}; skipped");
        }
        Ok(())
    };
    if let Some(t) = load("front") {
        let title = "Front end: CON GETs/s by load shape, privgw vs libcoap 4.3.1";
        add("front_throughput", "front", title, front(&t, images, title))?;
    }
    if let Some(t) = load("group") {
        let title =
            "Group write latency vs devices (cold: first write with handshakes; warm: median)";
        add(
            "group_latency",
            "group",
            title,
            group_latency(&t, images, title),
        )?;
        let title = "Gateway RSS per device session vs devices";
        add(
            "group_memory",
            "group",
            title,
            group_memory(&t, images, title),
        )?;
    }
    if let Some(t) = load("handshakes") {
        let title = "DTLS-PSK full handshakes + GET per second, privgw vs libcoap";
        add(
            "handshakes",
            "handshakes",
            title,
            versus_bars(
                &t,
                images,
                "handshakes",
                title,
                "handshakes/s",
                ("privgw_hs_per_s", "libcoap_hs_per_s"),
                &["clients", "run"],
            ),
        )?;
    }
    if let Some(t) = load("soak") {
        let title = "Gateway RSS under sustained load (data GETs and handshake churn)";
        add("soak_rss", "soak", title, soak_rss(&t, images, title))?;
    }
    for (name, title) in [
        (
            "proxy",
            "Proxied GETs/s to one DTLS-PSK device, privgw (nstart 1) vs libcoap -P",
        ),
        (
            "proxy_nstart16",
            "Proxied GETs/s to one DTLS-PSK device, privgw (nstart 16) vs libcoap -P",
        ),
    ] {
        if let Some(t) = load(name) {
            add(
                name,
                name,
                title,
                versus_bars(
                    &t,
                    images,
                    name,
                    title,
                    "requests/s",
                    ("privgw_rps", "libcoap_rps"),
                    &["shape", "run"],
                ),
            )?;
        }
    }
    Ok(made)
}

fn text(t: &Table, row: &[Cell], column: &str) -> String {
    t.columns
        .iter()
        .position(|c| c == column)
        .and_then(|i| row.get(i))
        .map(shown)
        .unwrap_or_default()
}

/// A cell as the Markdown and the labels show it.
fn shown(c: &Cell) -> String {
    match c {
        Cell::Text(s) => s.clone(),
        Cell::Int(i) => i.to_string(),
        Cell::Float(f) if f.abs() >= 100.0 => format!("{f:.0}"),
        Cell::Float(f) => format!("{f:.2}"),
    }
}

fn front(t: &Table, images: &Path, title: &str) -> CliResult<bool> {
    let labels: Vec<String> = t
        .rows
        .iter()
        .map(|r| {
            let target = text(t, r, "target");
            let target = if target.starts_with("data") {
                "data"
            } else {
                "wkc"
            };
            let transport = text(t, r, "transport");
            let transport = if transport.starts_with("dtls") {
                "dtls"
            } else {
                "udp"
            };
            format!("{target} {transport} {}", text(t, r, "shape"))
        })
        .collect();
    grouped_bars(
        &images.join("front_throughput.svg"),
        title,
        "requests/s",
        &labels,
        &[
            ("privgw", values(t, "privgw_rps"), PRIVGW),
            ("libcoap", values(t, "libcoap_rps"), LIBCOAP),
        ],
    )
}

fn values(t: &Table, column: &str) -> Vec<f64> {
    t.column(column)
        .into_iter()
        .map(|v| v.unwrap_or(0.0))
        .collect()
}

fn versus_bars(
    t: &Table,
    images: &Path,
    file: &str,
    title: &str,
    unit: &str,
    (ours, theirs): (&str, &str),
    label_columns: &[&str],
) -> CliResult<bool> {
    let labels: Vec<String> = t
        .rows
        .iter()
        .map(|r| {
            label_columns
                .iter()
                .map(|c| text(t, r, c))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    grouped_bars(
        &images.join(format!("{file}.svg")),
        title,
        unit,
        &labels,
        &[
            ("privgw", values(t, ours), PRIVGW),
            ("libcoap", values(t, theirs), LIBCOAP),
        ],
    )
}

fn points(t: &Table, x: &str, y: &str) -> Vec<(f64, f64)> {
    t.column(x)
        .into_iter()
        .zip(t.column(y))
        .filter_map(|(x, y)| Some((x?, y?)))
        .filter(|(x, y)| *x > 0.0 && y.is_finite())
        .collect()
}

fn group_latency(t: &Table, images: &Path, title: &str) -> CliResult<bool> {
    lines(
        &images.join("group_latency.svg"),
        title,
        ("devices", "ms"),
        XAxis::Log,
        &[
            (
                "cold (first write)",
                points(t, "devices", "cold_ms"),
                LIBCOAP,
            ),
            (
                "warm (median)",
                points(t, "devices", "warm_median_ms"),
                PRIVGW,
            ),
        ],
    )
}

fn soak_rss(t: &Table, images: &Path, title: &str) -> CliResult<bool> {
    let mib: Vec<(f64, f64)> = points(t, "t_s", "rss_kib")
        .into_iter()
        .map(|(t, kib)| (t, kib / 1024.0))
        .collect();
    lines(
        &images.join("soak_rss.svg"),
        title,
        ("seconds under load", "MiB"),
        XAxis::Linear,
        &[("gateway RSS", mib, PRIVGW)],
    )
}

fn group_memory(t: &Table, images: &Path, title: &str) -> CliResult<bool> {
    lines(
        &images.join("group_memory.svg"),
        title,
        ("devices", "KiB per session"),
        XAxis::Log,
        &[(
            "gateway RSS / session",
            points(t, "devices", "rss_per_device_kib"),
            THIRD,
        )],
    )
}

type Series<'a, T> = (&'a str, T, RGBColor);

/// Bars per category, one bar per series side by side. `false` when there is nothing to draw.
pub fn grouped_bars(
    path: &Path,
    title: &str,
    unit: &str,
    labels: &[String],
    series: &[Series<'_, Vec<f64>>],
) -> CliResult<bool> {
    let n = labels.len();
    if n == 0 || series.is_empty() {
        return Ok(false);
    }
    let top = series
        .iter()
        .flat_map(|(_, v, _)| v.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.15;
    let width = (160 + 110 * n as u32).clamp(640, 1600);
    let root = SVGBackend::new(path, (width, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..top)
        .map_err(err)?;
    let label_of = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n {
            labels[i as usize].clone()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&label_of)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .y_desc(unit)
        .draw()
        .map_err(err)?;
    let k = series.len() as f64;
    let bar = 0.8 / k;
    for (s, (name, values, color)) in series.iter().enumerate() {
        let color = *color;
        chart
            .draw_series(values.iter().enumerate().map(|(i, v)| {
                let x0 = i as f64 - 0.4 + bar * s as f64;
                Rectangle::new([(x0, 0.0), (x0 + bar * 0.95, *v)], color.filled())
            }))
            .map_err(err)?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(true)
}

/// How the x axis of [`lines`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XAxis {
    /// Devices 1 → 10 000.
    Log,
    /// From 0: seconds into a run.
    Linear,
}

/// Lines, one per series, with a dot per point. `false` when there is nothing to draw.
pub fn lines(
    path: &Path,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    x_axis: XAxis,
    series: &[Series<'_, Vec<(f64, f64)>>],
) -> CliResult<bool> {
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|(_, p, _)| p.iter().copied())
        .collect();
    if all.is_empty() {
        return Ok(false);
    }
    let x_max = all.iter().map(|p| p.0).fold(1.0, f64::max);
    let x_min = all.iter().map(|p| p.0).fold(f64::MAX, f64::min).max(1.0) / 1.5;
    let y_max = all.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-3) * 1.15;
    let descs = (x_desc, y_desc);
    match x_axis {
        XAxis::Log => lines_over(
            path,
            title,
            descs,
            (x_min..x_max * 1.5).log_scale(),
            y_max,
            series,
        ),
        XAxis::Linear => lines_over(path, title, descs, 0.0..x_max * 1.05, y_max, series),
    }
}

fn lines_over<X>(
    path: &Path,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    x: X,
    y_max: f64,
    series: &[Series<'_, Vec<(f64, f64)>>],
) -> CliResult<bool>
where
    X: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
{
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x, 0f64..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(err)?;
    for (name, pts, color) in series {
        if pts.is_empty() {
            continue;
        }
        let color = *color;
        let mut pts = pts.clone();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(true)
}

fn err<E: std::fmt::Display>(e: E) -> Box<dyn std::error::Error + Send + Sync> {
    format!("plotting: {e}").into()
}

/// A table as Markdown.
pub fn markdown_table(t: &Table) -> String {
    let mut s = format!("| {} |\n", t.columns.join(" | "));
    s.push_str(&format!("|{}\n", "---|".repeat(t.columns.len())));
    for r in &t.rows {
        let cells: Vec<String> = r.iter().map(|c| shown(c).replace('|', "\\|")).collect();
        s.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    s
}

/// Every table of the results folder (known ones first, in report order), each followed by
/// the figures made from it.
pub fn markdown(results: &Path, figures: &[Figure], prefix: &str) -> CliResult<String> {
    let mut names: Vec<String> = std::fs::read_dir(results)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let p = e.path();
            (p.extension()? == "json").then(|| p.file_stem()?.to_str().map(str::to_owned))?
        })
        .collect();
    names.sort_by_key(|n| {
        (
            KNOWN.iter().position(|k| k == n).unwrap_or(KNOWN.len()),
            n.clone(),
        )
    });
    let mut s = String::new();
    for name in names {
        let Ok(t) = Table::load(results, &name) else {
            continue;
        };
        s.push_str(&format!("### `{name}`\n\n{}\n", markdown_table(&t)));
        for f in figures.iter().filter(|f| f.table == name) {
            s.push_str(&format!("![{}]({prefix}/{}.svg)\n\n", f.title, f.file));
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_tables_escape_pipes_and_show_numbers_like_the_terminal() {
        let mut t = Table::new("front", &["target", "privgw_rps", "ratio"]);
        t.push(vec!["a|b".into(), 41_100.4.into(), 0.791.into()]);
        let md = markdown_table(&t);
        assert_eq!(
            md,
            "| target | privgw_rps | ratio |\n|---|---|---|\n| a\\|b | 41100 | 0.79 |\n"
        );
    }

    #[test]
    fn figures_are_drawn_from_the_tables_present_and_others_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Table::new(
            "group",
            &["devices", "cold_ms", "warm_median_ms", "rss_per_device_kib"],
        );
        for (n, c, w, m) in [
            (1u64, 5.0, 1.0, 40.0),
            (100, 50.0, 3.0, 30.0),
            (10_000, 4000.0, 500.0, 20.0),
        ] {
            t.push(vec![n.into(), c.into(), w.into(), m.into()]);
        }
        std::fs::create_dir_all(dir.path()).unwrap();
        std::fs::write(
            dir.path().join("group.json"),
            serde_json::to_string(&t.to_json()).unwrap(),
        )
        .unwrap();
        let made = draw_all(dir.path(), dir.path()).unwrap();
        let files: Vec<&str> = made.iter().map(|f| f.file.as_str()).collect();
        assert_eq!(files, ["group_latency", "group_memory"]);
        let svg = std::fs::read_to_string(dir.path().join("group_latency.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("warm (median)"));
        let md = markdown(dir.path(), &made, "docs/bench").unwrap();
        assert!(md.contains("### `group`"));
        assert!(md.contains("(docs/bench/group_memory.svg)"));
    }
}
