//! `section NAME FILE [DOC]`: each benchmark owns one section of BENCHMARKS.md (or RELIABILITY.md)
//! between `<!-- BEGIN NAME -->` and `<!-- END NAME -->` and rewrites only that one, so
//! benchmarks run at different times never overwrite each other's figures. Everything outside
//! the markers stays byte for byte.

use std::path::Path;

use anyhow::Context;

/// The new document: `doc` with the section `name` holding `body` (trimmed). Errors when the
/// name is not `[a-z0-9-]+`, or the markers are missing, repeated or out of order, unless
/// `append` allows a section that does not exist yet to be added at the end.
pub fn replace(doc: &str, name: &str, body: &str, append: bool) -> anyhow::Result<String> {
    anyhow::ensure!(
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
        "section name {name:?}: use lowercase letters, digits and '-'"
    );
    let (begin, end) = (
        format!("<!-- BEGIN {name} -->"),
        format!("<!-- END {name} -->"),
    );
    let block = format!("{begin}\n{}\n{end}", body.trim());
    let (begins, ends) = (doc.matches(&begin).count(), doc.matches(&end).count());
    match (begins, ends) {
        (0, 0) if append => Ok(format!("{}\n\n{block}\n", doc.trim_end())),
        (0, 0) => anyhow::bail!(
            "no section {name}: add the lines `{begin}` and `{end}` where it belongs \
             (or pass --append to add it at the end)"
        ),
        (1, 1) => {
            let start = doc.find(&begin).unwrap_or_default();
            let stop = doc[start..]
                .find(&end)
                .map(|i| start + i + end.len())
                .with_context(|| format!("`{end}` comes before `{begin}`"))?;
            Ok(format!("{}{block}{}", &doc[..start], &doc[stop..]))
        }
        _ => anyhow::bail!(
            "section {name}: {begins} `{begin}` and {ends} `{end}` lines, want exactly one of each"
        ),
    }
}

/// Replaces the section `name` of the file `doc` with `body`.
pub fn write(doc: &Path, name: &str, body: &str, append: bool) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(doc).with_context(|| format!("read {}", doc.display()))?;
    let new = replace(&text, name, body, append).with_context(|| doc.display().to_string())?;
    std::fs::write(doc, new).with_context(|| format!("write {}", doc.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "# Benchmarks\r\n\nintro  \n<!-- BEGIN a -->\nold a\n<!-- END a -->\n\n\
        <!-- BEGIN b -->\nold b\n<!-- END b -->\ntail without newline";

    fn ok(r: anyhow::Result<String>) -> String {
        r.unwrap_or_else(|e| panic!("{e:#}"))
    }

    fn err(r: anyhow::Result<String>) -> String {
        match r {
            Ok(doc) => panic!("expected an error, got {doc:?}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn replaces_one_section_and_keeps_the_rest_byte_for_byte() {
        let new = ok(replace(DOC, "b", "\n\nnew b\n| x |\n\n", false));
        let want = DOC.replace("old b", "new b\n| x |");
        assert_eq!(new, want);
        // The same twice: nothing moves.
        assert_eq!(ok(replace(&new, "b", "new b\n| x |", false)), want);
        let a = ok(replace(DOC, "a", "", false));
        assert_eq!(a, DOC.replace("old a", ""));
    }

    #[test]
    fn a_name_that_prefixes_another_is_not_confused_with_it() {
        let doc = "<!-- BEGIN a-b -->\nx\n<!-- END a-b -->\n<!-- BEGIN a -->\ny\n<!-- END a -->\n";
        let new = ok(replace(doc, "a", "z", false));
        assert_eq!(new, doc.replace("\ny\n", "\nz\n"));
    }

    #[test]
    fn missing_markers_are_an_error_unless_appending() {
        let e = err(replace(DOC, "c", "new", false));
        assert!(
            e.contains("no section c") && e.contains("<!-- BEGIN c -->"),
            "{e}"
        );
        let appended = ok(replace(DOC, "c", "new\n", true));
        assert_eq!(
            appended,
            format!("{DOC}\n\n<!-- BEGIN c -->\nnew\n<!-- END c -->\n")
        );
    }

    #[test]
    fn broken_markers_are_an_error() {
        let no_end = DOC.replace("<!-- END a -->", "");
        assert!(err(replace(&no_end, "a", "x", true)).contains("want exactly one"));
        let twice = format!("{DOC}\n<!-- BEGIN a -->\n<!-- END a -->\n");
        assert!(err(replace(&twice, "a", "x", false)).contains("2 `<!-- BEGIN a -->`"));
        let reversed = "<!-- END a -->\n<!-- BEGIN a -->\n";
        assert!(err(replace(reversed, "a", "x", false)).contains("comes before"));
        assert!(err(replace(DOC, "A b", "x", false)).contains("section name"));
        assert!(err(replace(DOC, "", "x", false)).contains("section name"));
    }

    #[test]
    fn writes_the_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("DOC.md");
        std::fs::write(&path, DOC).unwrap_or_else(|e| panic!("{e}"));
        write(&path, "a", "fresh", false).unwrap_or_else(|e| panic!("{e:#}"));
        let got = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got, DOC.replace("old a", "fresh"));
        let missing = write(&dir.path().join("none.md"), "a", "x", true);
        assert!(missing.is_err());
        let unchanged = write(&path, "zzz", "x", false);
        assert!(unchanged.is_err());
        let after = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(after, got, "a failed replace leaves the file alone");
    }
}
