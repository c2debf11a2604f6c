//! Scenario files: `key = value` lines (`#` comments) naming long flags, found by name in
//! `load/scenarios/NAME.conf` or by path. They become `--key=value` arguments placed before the
//! command line's, so flags given on the command line win.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::CommandFactory;

use crate::cli::Args;

/// A scenario, read and turned into arguments.
#[derive(Debug)]
pub struct Scenario {
    /// Its name (file stem).
    pub name: String,
    /// Where it was read from.
    pub path: PathBuf,
    /// `--key=value` arguments.
    pub args: Vec<String>,
}

/// The folder of built-in scenarios: `load/scenarios` of this crate's source tree, or
/// `load/scenarios` / `scenarios` under the current directory when the binary was moved.
pub fn dirs() -> Vec<PathBuf> {
    vec![
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios"),
        PathBuf::from("load/scenarios"),
        PathBuf::from("scenarios"),
    ]
}

/// Finds and reads `name_or_path`.
///
/// # Errors
/// When it cannot be found or read, or a line is not a known `key = value`.
pub fn load(name_or_path: &str) -> Result<Scenario> {
    let as_path = PathBuf::from(name_or_path);
    let path = if as_path.is_file() {
        as_path
    } else {
        let file = format!("{name_or_path}.conf");
        match dirs()
            .into_iter()
            .map(|d| d.join(&file))
            .find(|p| p.is_file())
        {
            Some(p) => p,
            None => bail!(
                "no scenario `{name_or_path}`: not a file, and not in {} (built in: {})",
                dirs()[0].display(),
                available().join(", ")
            ),
        }
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let args = to_args(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let name = path.file_stem().map_or_else(
        || name_or_path.to_owned(),
        |s| s.to_string_lossy().into_owned(),
    );
    Ok(Scenario { name, path, args })
}

/// Built-in scenario names.
pub fn available() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(&dirs()[0])
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let p = e.path();
                    if p.extension()? != "conf" {
                        return None;
                    }
                    Some(p.file_stem()?.to_string_lossy().into_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// `key = value` lines → `--key=value`; keys may use `_` for `-`. Only long flags of [`Args`]
/// are allowed, and not `scenario` itself.
///
/// # Errors
/// A message naming the line.
pub fn to_args(text: &str) -> Result<Vec<String>, String> {
    let cmd = Args::command();
    let known: Vec<&str> = cmd
        .get_arguments()
        .filter_map(clap::Arg::get_long)
        .filter(|l| !matches!(*l, "scenario" | "help" | "version"))
        .collect();
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = strip_comment(raw).trim();
        if line.is_empty() {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: expected `key = value`", n + 1))?;
        let key = k.trim().to_ascii_lowercase().replace('_', "-");
        if !known.contains(&key.as_str()) {
            return Err(format!(
                "line {}: unknown key `{}` (keys are the long flags: {})",
                n + 1,
                k.trim(),
                known.join(", ")
            ));
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        out.push(format!("--{key}={v}"));
    }
    Ok(out)
}

/// Drops a `#` comment: at the start of the line, or after whitespace.
fn strip_comment(line: &str) -> &str {
    if line.trim_start().starts_with('#') {
        return "";
    }
    match line.find(" #").or_else(|| line.find("\t#")) {
        Some(i) => &line[..i],
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn lines_become_flags_and_the_command_line_wins() {
        let args = to_args(
            "# a comment\n\nphases = closed:5s, open:3s@2000\nconcurrency = 32   # inline\nallow_errors = true\nmix = \"hits=1\"\n",
        )
        .expect("parse");
        assert_eq!(
            args,
            [
                "--phases=closed:5s, open:3s@2000",
                "--concurrency=32",
                "--allow-errors=true",
                "--mix=hits=1"
            ]
        );
        let mut argv = vec!["x".to_owned()];
        argv.extend(args);
        argv.extend(["--concurrency".to_owned(), "8".to_owned()]);
        let a = Args::try_parse_from(argv).expect("args");
        assert_eq!(a.concurrency, 8);
        assert!(a.allow_errors);
        assert_eq!(a.phases.0.len(), 2);
    }

    #[test]
    fn bad_lines_are_named() {
        assert!(to_args("nonsense").unwrap_err().contains("line 1"));
        assert!(
            to_args("\nwarp = 9")
                .unwrap_err()
                .contains("line 2: unknown key `warp`")
        );
        assert!(to_args("scenario = smoke").is_err());
    }

    #[test]
    fn built_in_scenarios_parse() {
        for name in ["smoke", "steady", "spike", "revocation-storm"] {
            let s = load(name).expect(name);
            let mut argv = vec!["x".to_owned()];
            argv.extend(s.args);
            let a = Args::try_parse_from(argv).unwrap_or_else(|e| panic!("{name}: {e}"));
            a.resolved_phases().expect("phases");
        }
    }
}
