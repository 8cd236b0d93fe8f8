//! The README stays true: every option (flag and environment variable) of every binary is
//! documented in it.
#![allow(clippy::unwrap_used)]

use clothesline_tests::paths;

#[test]
fn readme_documents_every_option_of_every_binary() {
    let readme = std::fs::read_to_string(paths::repo_root().join("README.md")).unwrap();
    for bin in paths::BINARIES {
        let help = paths::help(bin);
        let mut seen = 0;
        // Option lines look like `  -h, --help` or `      --nats-url <URL>`.
        for line in help.lines().map(str::trim_start) {
            let line = line
                .split_once(", ")
                .filter(|(short, _)| short.starts_with('-'))
                .map_or(line, |(_, l)| l);
            let Some(flag) = line
                .strip_prefix("--")
                .and_then(|l| l.split_whitespace().next())
            else {
                continue;
            };
            if flag == "help" || flag == "version" {
                continue;
            }
            assert!(
                readme.contains(&format!("`--{flag}`")),
                "README.md does not document --{flag} of {bin}"
            );
            seen += 1;
        }
        for env in help
            .split("[env: ")
            .skip(1)
            .map(|s| s.split(['=', ']']).next().unwrap())
        {
            assert!(
                readme.contains(&format!("`{env}`")),
                "README.md does not document {env} of {bin}"
            );
            seen += 1;
        }
        assert!(seen > 4, "{bin}: no options found in --help");
    }
}
