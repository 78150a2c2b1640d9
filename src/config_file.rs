//! `--config FILE` (issue 12): one `long-option = value` per line, the
//! same names as the command line, `#` starting a comment line, blank lines
//! ignored; a flag takes `true` or `false`. The file becomes command-line
//! arguments placed before the real ones, and an option given on the
//! command line wins over the file's (the turnserver.conf / redis.conf
//! convention). Unknown keys and values getopts refuses are errors that
//! name the file and line. No I/O but reading the file.

use std::collections::HashMap;

use getopts::Options;

/// Options that make no sense in a file.
const COMMAND_LINE_ONLY: [&str; 4] = ["config", "check-config", "help", "version"];

/// The arguments with `--config FILE` expanded, and where each option that
/// came from the file was (`key` -> "FILE:LINE"), to name it in errors.
pub fn expand(
    args: &[String],
    opts: &Options,
) -> Result<(Vec<String>, HashMap<String, String>), String> {
    let (path, rest) = take_config(args)?;
    let Some(path) = path else {
        return Ok((args.to_vec(), HashMap::new()));
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|error| format!("--config {}: {error}", path.display()))?;
    let given = opts.parse(&rest).map_err(|error| error.to_string())?;
    let mut from_file = Vec::new();
    let mut lines = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let at = format!("{}:{}", path.display(), index + 1);
        let Some((key, value)) = parse_line(line).map_err(|why| format!("{at}: {why}"))? else {
            continue;
        };
        if COMMAND_LINE_ONLY.contains(&key) {
            return Err(format!(
                "{at}: {key} belongs on the command line, not in a file"
            ));
        }
        let arg = as_argument(opts, key, value).map_err(|why| format!("{at}: {why}"))?;
        if lines.insert(key.to_owned(), at.clone()).is_some() {
            return Err(format!("{at}: {key} is given twice in the file"));
        }
        // The command line wins.
        if given.opt_present(key) {
            continue;
        }
        from_file.extend(arg);
    }
    from_file.extend(rest);
    Ok((from_file, lines))
}

/// `--config FILE` or `--config=FILE` taken out of `args`.
fn take_config(args: &[String]) -> Result<(Option<std::path::PathBuf>, Vec<String>), String> {
    let mut path = None;
    let mut rest = Vec::with_capacity(args.len());
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let value = if arg == "--config" {
            Some(iter.next().cloned().ok_or("--config needs a FILE")?)
        } else {
            arg.strip_prefix("--config=").map(str::to_owned)
        };
        match value {
            Some(_) if path.is_some() => return Err("--config is given twice".to_owned()),
            Some(value) => path = Some(std::path::PathBuf::from(value)),
            None => rest.push(arg.clone()),
        }
    }
    Ok((path, rest))
}

/// `key = value` (`None` for a blank or comment line).
fn parse_line(line: &str) -> Result<Option<(&str, &str)>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let (key, value) = line
        .split_once('=')
        .ok_or_else(|| format!("{line:?} is not `option = value`"))?;
    let key = key.trim();
    if key.is_empty() || key.starts_with('-') {
        return Err(format!("{key:?}: write the option's name without dashes"));
    }
    Ok(Some((key, value.trim())))
}

/// The command-line argument(s) for `key = value`, checked by getopts.
fn as_argument(opts: &Options, key: &str, value: &str) -> Result<Vec<String>, String> {
    let flag = format!("--{key}");
    let is_flag = opts.parse([flag.as_str()]).is_ok();
    if is_flag {
        return match value {
            "true" | "yes" | "on" => Ok(vec![flag]),
            "false" | "no" | "off" => Ok(Vec::new()),
            other => Err(format!("{key} is a flag: true or false, not {other:?}")),
        };
    }
    let arg = format!("--{key}={value}");
    match opts.parse([arg.as_str()]) {
        Ok(_) => Ok(vec![arg]),
        Err(getopts::Fail::UnrecognizedOption(_)) => {
            Err(format!("unknown option {key:?} (see --help for the names)"))
        }
        Err(error) => Err(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        let mut opts = Options::new();
        opts.optopt("", "ring-timeout", "", "SECS");
        opts.optopt("", "listen", "", "ADDR");
        opts.optflag("", "require-tls", "");
        opts.optopt("", "config", "", "FILE");
        opts
    }

    fn write(name: &str, text: &str) -> String {
        let path =
            std::env::temp_dir().join(format!("callrelay-conf-{}-{name}", std::process::id()));
        std::fs::write(&path, text).expect("write");
        path.display().to_string()
    }

    fn args(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn file_options_come_first_and_the_command_line_wins() {
        let path = write(
            "ok",
            "# comment\n\nring-timeout = 5\nlisten=0.0.0.0:9\nrequire-tls = true\n",
        );
        let (expanded, lines) = expand(
            &args(&["--config", &path, "--listen", "127.0.0.1:1"]),
            &opts(),
        )
        .expect("valid");
        assert_eq!(
            expanded,
            args(&[
                "--ring-timeout=5",
                "--require-tls",
                "--listen",
                "127.0.0.1:1"
            ])
        );
        assert_eq!(lines.get("ring-timeout"), Some(&format!("{path}:3")));
    }

    #[test]
    fn bad_lines_name_the_file_and_line() {
        for (name, text, needle) in [
            (
                "unknown",
                "ring-timeout = 5\nbogus = 1\n",
                ":2: unknown option \"bogus\"",
            ),
            ("flag", "require-tls = maybe\n", ":1: require-tls is a flag"),
            ("shape", "ring-timeout 5\n", ":1: \"ring-timeout 5\" is not"),
            ("dashes", "--listen = x\n", ":1: \"--listen\": write"),
            (
                "twice",
                "listen = a\nlisten = b\n",
                ":2: listen is given twice",
            ),
            (
                "nested",
                "config = other\n",
                ":1: config belongs on the command line",
            ),
        ] {
            let path = write(name, text);
            let error = expand(&args(&["--config", &path]), &opts()).expect_err(name);
            assert!(
                error.contains(&format!("{path}{needle}")),
                "{name}: {error}"
            );
        }
        assert!(expand(&args(&["--config", "/nonexistent/x.conf"]), &opts()).is_err());
        assert_eq!(
            expand(&args(&["--listen", "x"]), &opts())
                .expect("no file")
                .0,
            args(&["--listen", "x"])
        );
    }
}
