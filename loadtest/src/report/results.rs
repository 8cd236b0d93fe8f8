//! A benchmark's results folder as the scripts under `scripts/` leave it: the load generator's
//! JSON reports (`NAME.json`), `KEY=VALUE` files (`machine.txt`, counters), whitespace-separated
//! numbers (CPU seconds, resident memory samples) and the text other benchmarks printed.
//! A file that is there but cannot be read as expected is an error naming it; an optional file
//! that is not there is `None`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::report::Report;

#[derive(Debug, Clone)]
pub struct Results {
    dir: PathBuf,
}

impl Results {
    pub fn new(dir: impl Into<PathBuf>) -> anyhow::Result<Self> {
        let dir = dir.into();
        anyhow::ensure!(
            dir.is_dir(),
            "{}: not a folder of benchmark results",
            dir.display()
        );
        Ok(Self { dir })
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    pub fn exists(&self, file: &str) -> bool {
        self.path(file).is_file()
    }

    /// The file's text, `None` when it is not there.
    pub fn text(&self, file: &str) -> anyhow::Result<Option<String>> {
        let path = self.path(file);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
        }
    }

    fn required(&self, file: &str) -> anyhow::Result<String> {
        self.text(file)?
            .with_context(|| format!("{} is missing", self.path(file).display()))
    }

    /// The report `NAME.json`, which must be there.
    pub fn report(&self, name: &str) -> anyhow::Result<Report> {
        let file = format!("{name}.json");
        parse_report(&self.path(&file), &self.required(&file)?)
    }

    /// The report `NAME.json`, `None` when it is not there.
    pub fn report_opt(&self, name: &str) -> anyhow::Result<Option<Report>> {
        let file = format!("{name}.json");
        self.text(&file)?
            .map(|text| parse_report(&self.path(&file), &text))
            .transpose()
    }

    /// The names (without `.json`) of the JSON files whose names start with `prefix`, sorted.
    pub fn json_names(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in
            std::fs::read_dir(&self.dir).with_context(|| format!("list {}", self.dir.display()))?
        {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(".json")
                && stem.starts_with(prefix)
            {
                names.push(stem.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Every labelled load generator report in the folder (other JSON files are skipped), in the
    /// order of their file names.
    pub fn labelled_reports(&self) -> anyhow::Result<Vec<Report>> {
        let mut reports = Vec::new();
        for stem in self.json_names("")? {
            let name = format!("{stem}.json");
            let path = self.path(&name);
            let text = self.required(&name)?;
            let value: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not JSON", path.display()))?;
            let labelled = value.get("label").is_some_and(|l| l.is_string());
            if labelled && value.get("latency_ms").is_some() {
                reports.push(
                    serde_json::from_value(value)
                        .with_context(|| format!("{}: not a load test report", path.display()))?,
                );
            }
        }
        Ok(reports)
    }

    /// The `KEY=VALUE` lines of a file that must be there (other lines are skipped).
    pub fn kv(&self, file: &str) -> anyhow::Result<BTreeMap<String, String>> {
        Ok(kv(&self.required(file)?))
    }

    /// Like [`Results::kv`], empty when the file is not there.
    pub fn kv_opt(&self, file: &str) -> anyhow::Result<BTreeMap<String, String>> {
        Ok(self.text(file)?.map(|t| kv(&t)).unwrap_or_default())
    }

    /// The whitespace-separated numbers of a file; empty when it is not there.
    pub fn numbers(&self, file: &str) -> anyhow::Result<Vec<f64>> {
        match self.text(file)? {
            Some(text) => numbers(&text).with_context(|| self.path(file).display().to_string()),
            None => Ok(Vec::new()),
        }
    }
}

fn parse_report(path: &Path, text: &str) -> anyhow::Result<Report> {
    serde_json::from_str(text)
        .with_context(|| format!("{}: not a load test report", path.display()))
}

pub fn kv(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The numbers of one line or file, separated by whitespace.
pub fn numbers(text: &str) -> anyhow::Result<Vec<f64>> {
    text.split_whitespace()
        .map(|word| {
            word.parse::<f64>()
                .with_context(|| format!("{word:?} is not a number"))
        })
        .collect()
}

/// A `KEY=VALUE` file's value, `?` when absent (as a report shows it).
pub fn or_unknown<'a>(kv: &'a BTreeMap<String, String>, key: &str) -> &'a str {
    kv.get(key).map_or("?", String::as_str)
}

/// A `KEY=VALUE` file's value as a number; an error naming the key when absent or not a number.
pub fn number(kv: &BTreeMap<String, String>, key: &str) -> anyhow::Result<f64> {
    let value = kv.get(key).with_context(|| format!("no {key}="))?;
    value
        .parse()
        .with_context(|| format!("{key}={value} is not a number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_and_numbers() {
        let m = kv("date=2026\ncpu=AMD EPYC = fast\nnot a pair\n");
        assert_eq!(m.get("cpu").map(String::as_str), Some("AMD EPYC = fast"));
        assert_eq!(or_unknown(&m, "nproc"), "?");
        assert!(number(&m, "cpu").is_err());
        assert_eq!(numbers(" 1.5 2\n3 ").ok(), Some(vec![1.5, 2.0, 3.0]));
        assert!(numbers("1 x").is_err());
    }

    #[test]
    fn missing_and_broken_files() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let results = Results::new(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert!(results.report_opt("nope").ok().flatten().is_none());
        let missing = results.report("nope").err().map(|e| format!("{e:#}"));
        assert!(missing.is_some_and(|e| e.contains("nope.json is missing")));
        std::fs::write(dir.path().join("bad.json"), "{").unwrap_or_else(|e| panic!("{e}"));
        let bad = results.report("bad").err().map(|e| format!("{e:#}"));
        assert!(bad.is_some_and(|e| e.contains("bad.json: not a load test report")));
        assert!(results.labelled_reports().is_err());
        assert!(Results::new(dir.path().join("none")).is_err());
    }
}
