//! Benchmark results: one named table per measurement, printed on the terminal and written as
//! CSV and JSON under the results folder (`<dir>/<name>.csv`, `<dir>/<name>.json`), plus a
//! progress line on stderr for anything that runs longer than a few seconds.
//!
//! Every `privgw bench` shape reports through this, so the plots and BENCHMARKS.md read one
//! format: a header row of column names, then rows of cells in that order.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One cell of a result row.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Text(String),
    Int(i64),
    Float(f64),
}

impl Cell {
    fn csv(&self) -> String {
        match self {
            Cell::Text(s) if s.contains([',', '"', '\n']) => {
                format!("\"{}\"", s.replace('"', "\"\""))
            }
            Cell::Text(s) => s.clone(),
            Cell::Int(i) => i.to_string(),
            Cell::Float(f) => format!("{f:.3}"),
        }
    }

    fn json(&self) -> serde_json::Value {
        match self {
            Cell::Text(s) => serde_json::Value::from(s.as_str()),
            Cell::Int(i) => serde_json::Value::from(*i),
            Cell::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
        }
    }

    fn shown(&self) -> String {
        match self {
            Cell::Text(s) => s.clone(),
            Cell::Int(i) => i.to_string(),
            Cell::Float(f) if f.abs() >= 100.0 => format!("{f:.0}"),
            Cell::Float(f) => format!("{f:.2}"),
        }
    }

    /// The cell as a number, if it is one (plots read columns this way).
    pub fn number(&self) -> Option<f64> {
        match self {
            Cell::Int(i) => Some(*i as f64),
            Cell::Float(f) => Some(*f),
            Cell::Text(s) => s.parse().ok(),
        }
    }
}

impl From<&str> for Cell {
    fn from(s: &str) -> Cell {
        Cell::Text(s.to_owned())
    }
}
impl From<String> for Cell {
    fn from(s: String) -> Cell {
        Cell::Text(s)
    }
}
impl From<f64> for Cell {
    fn from(f: f64) -> Cell {
        Cell::Float(f)
    }
}
impl From<u64> for Cell {
    fn from(i: u64) -> Cell {
        Cell::Int(i64::try_from(i).unwrap_or(i64::MAX))
    }
}
impl From<usize> for Cell {
    fn from(i: usize) -> Cell {
        Cell::from(i as u64)
    }
}
impl From<i64> for Cell {
    fn from(i: i64) -> Cell {
        Cell::Int(i)
    }
}

/// A named table of results (`name` is also the file stem under the results folder).
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub name: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

impl Table {
    pub fn new(name: &str, columns: &[&str]) -> Table {
        Table {
            name: name.to_owned(),
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; it must have one cell per column.
    pub fn push(&mut self, row: Vec<Cell>) {
        debug_assert_eq!(row.len(), self.columns.len(), "row width of {}", self.name);
        self.rows.push(row);
    }

    /// The column `name`'s cells as numbers (non-numbers skipped).
    pub fn column(&self, name: &str) -> Vec<Option<f64>> {
        let Some(i) = self.columns.iter().position(|c| c == name) else {
            return Vec::new();
        };
        self.rows
            .iter()
            .map(|r| r.get(i).and_then(Cell::number))
            .collect()
    }

    /// The table aligned for a terminal.
    pub fn render(&self) -> String {
        let shown: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| r.iter().map(Cell::shown).collect())
            .collect();
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|i| {
                shown
                    .iter()
                    .filter_map(|r| r.get(i).map(String::len))
                    .chain([self.columns[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = format!("== {}\n", self.name);
        let line = |cells: &[String], out: &mut String| {
            let parts: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:>w$}"))
                .collect();
            let _ = writeln!(out, "{}", parts.join("  "));
        };
        line(&self.columns, &mut out);
        for r in &shown {
            line(r, &mut out);
        }
        out
    }

    pub fn to_csv(&self) -> String {
        let mut out = self.columns.join(",");
        out.push('\n');
        for r in &self.rows {
            let cells: Vec<String> = r.iter().map(Cell::csv).collect();
            out.push_str(&cells.join(","));
            out.push('\n');
        }
        out
    }

    /// `{"name": …, "columns": [...], "rows": [{column: value, …}, …]}`.
    pub fn to_json(&self) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|r| {
                let map: serde_json::Map<String, serde_json::Value> = self
                    .columns
                    .iter()
                    .cloned()
                    .zip(r.iter().map(Cell::json))
                    .collect();
                serde_json::Value::Object(map)
            })
            .collect();
        serde_json::json!({ "name": self.name, "columns": self.columns, "rows": rows })
    }

    /// Reads a table back from its JSON form (the plots do).
    pub fn from_json(value: &serde_json::Value) -> Option<Table> {
        let name = value.get("name")?.as_str()?.to_owned();
        let columns: Vec<String> = value
            .get("columns")?
            .as_array()?
            .iter()
            .filter_map(|c| c.as_str().map(str::to_owned))
            .collect();
        let rows = value
            .get("rows")?
            .as_array()?
            .iter()
            .map(|row| {
                columns
                    .iter()
                    .map(|c| match row.get(c) {
                        Some(serde_json::Value::String(s)) => Cell::Text(s.clone()),
                        Some(serde_json::Value::Number(n)) => n
                            .as_i64()
                            .map(Cell::Int)
                            .unwrap_or_else(|| Cell::Float(n.as_f64().unwrap_or(f64::NAN))),
                        _ => Cell::Text(String::new()),
                    })
                    .collect()
            })
            .collect();
        Some(Table {
            name,
            columns,
            rows,
        })
    }

    /// Prints the table and writes `<dir>/<name>.csv` and `<dir>/<name>.json`.
    pub fn emit(&self, dir: &Path) -> std::io::Result<PathBuf> {
        print!("{}", self.render());
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join(format!("{}.csv", self.name)), self.to_csv())?;
        let json = dir.join(format!("{}.json", self.name));
        let body = serde_json::to_string_pretty(&self.to_json()).map_err(std::io::Error::other)?;
        std::fs::write(&json, body)?;
        Ok(json)
    }

    /// Reads `<dir>/<name>.json`.
    pub fn load(dir: &Path, name: &str) -> std::io::Result<Table> {
        let text = std::fs::read_to_string(dir.join(format!("{name}.json")))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(std::io::Error::other)?;
        Table::from_json(&value)
            .ok_or_else(|| std::io::Error::other(format!("{name}.json: not a result table")))
    }
}

/// Median of a sample (0 when empty); sorts it.
pub fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    match samples.len() {
        0 => 0.0,
        n if n % 2 == 1 => samples[n / 2],
        n => (samples[n / 2 - 1] + samples[n / 2]) / 2.0,
    }
}

/// Nearest-rank percentile `p` (0..=1) of a sorted sample.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// A progress line on stderr, at most once per second, after the first few seconds.
pub struct Progress {
    label: String,
    total: u64,
    started: Instant,
    last: Option<Instant>,
}

impl Progress {
    const QUIET_FOR: Duration = Duration::from_secs(2);

    pub fn new(label: &str, total: u64) -> Progress {
        Progress {
            label: label.to_owned(),
            total,
            started: Instant::now(),
            last: None,
        }
    }

    /// Reports `done` of the total if a second has passed since the last line.
    pub fn tick(&mut self, done: u64) {
        let now = Instant::now();
        if now.duration_since(self.started) < Self::QUIET_FOR
            || self
                .last
                .is_some_and(|l| now.duration_since(l) < Duration::from_secs(1))
        {
            return;
        }
        self.last = Some(now);
        let mut err = std::io::stderr().lock();
        let _ = writeln!(
            err,
            "  {}: {done}/{} ({:.0} s)",
            self.label,
            self.total,
            now.duration_since(self.started).as_secs_f64()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_round_trips_through_json_and_quotes_csv() {
        let mut t = Table::new("front", &["shape", "privgw", "libcoap", "ratio"]);
        t.push(vec![
            "16 x 1".into(),
            41_100.0.into(),
            51_900u64.into(),
            0.79.into(),
        ]);
        t.push(vec!["a,b".into(), 1.5.into(), 2u64.into(), 0.75.into()]);
        let back = Table::from_json(&t.to_json()).unwrap();
        assert_eq!(back.rows[0][2], Cell::Int(51_900));
        assert_eq!(back.column("ratio"), vec![Some(0.79), Some(0.75)]);
        let csv = t.to_csv();
        assert!(csv.starts_with("shape,privgw,libcoap,ratio\n16 x 1,41100.000,51900,0.790\n"));
        assert!(csv.contains("\"a,b\""));
        assert!(t.render().contains("ratio"));
    }

    #[test]
    fn median_and_percentiles() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
        assert_eq!(percentile_sorted(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.9), 5.0);
    }
}
