//! The `report` and `section` subcommands.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::Context;

use super::results::Results;
use super::{chart, ingress, pipeline, plumbing, section, tracing};
use crate::cli::{ReportArgs, ReportCommand, SectionArgs};

pub fn report(command: ReportCommand) -> anyhow::Result<()> {
    let (args, markdown) = match command {
        ReportCommand::Pipeline { common, chart } => {
            let results = Results::new(&common.results)?;
            let inputs = pipeline::Inputs::load(&results, &chart.display().to_string())?;
            let markdown = pipeline::markdown(&results, &inputs)?;
            let svg = chart::svg(&inputs.runs, inputs.ceiling())?;
            write(&chart, &svg)?;
            (common, markdown)
        }
        ReportCommand::Ingress(args) => {
            let markdown = ingress::markdown(&Results::new(&args.results)?)?;
            (args, markdown)
        }
        ReportCommand::Plumbing(args) => {
            let markdown = plumbing::markdown(&Results::new(&args.results)?)?;
            (args, markdown)
        }
        ReportCommand::Tracing(args) => {
            let markdown = tracing::markdown(&Results::new(&args.results)?)?;
            (args, markdown)
        }
    };
    output(&args, &markdown)
}

fn output(args: &ReportArgs, markdown: &str) -> anyhow::Result<()> {
    match &args.out {
        Some(path) => write(path, markdown),
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(markdown.as_bytes())?;
            Ok(out.flush()?)
        }
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

pub fn section(args: &SectionArgs) -> anyhow::Result<()> {
    let body = if args.file.as_os_str() == "-" {
        let mut body = String::new();
        std::io::stdin().read_to_string(&mut body)?;
        body
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("read {}", args.file.display()))?
    };
    section::write(&args.doc, &args.name, &body, args.append)?;
    eprintln!("{}: section {} updated", args.doc.display(), args.name);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn pipeline_writes_the_chart_and_the_markdown_that_links_it() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let results = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/reports/pipeline");
        let chart = dir.path().join("charts/pipeline.svg");
        let out = dir.path().join("section.md");
        let common = ReportArgs {
            results,
            out: Some(out.clone()),
        };
        report(ReportCommand::Pipeline {
            common,
            chart: chart.clone(),
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
        let md = read(&out);
        assert!(md.contains(&format!("]({})\n", chart.display())), "{md}");
        assert!(read(&chart).starts_with("<svg"));
        let missing = ReportArgs {
            results: dir.path().join("none"),
            out: None,
        };
        assert!(report(ReportCommand::Ingress(missing)).is_err());
    }

    #[test]
    fn section_from_a_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (doc, file) = (dir.path().join("DOC.md"), dir.path().join("new.md"));
        std::fs::write(&doc, "# D\n<!-- BEGIN s -->\nold\n<!-- END s -->\nrest\n")
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&file, "\nnew\n\n").unwrap_or_else(|e| panic!("{e}"));
        let args = |name: &str| SectionArgs {
            name: name.into(),
            file: file.clone(),
            doc: doc.clone(),
            append: false,
        };
        section(&args("s")).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            read(&doc),
            "# D\n<!-- BEGIN s -->\nnew\n<!-- END s -->\nrest\n"
        );
        let e = section(&args("t")).err().map(|e| format!("{e:#}"));
        assert!(e.is_some_and(|e| e.contains("no section t")));
    }
}
