//! Loading the configuration: defaults, then the TOML file, then `OUTPOST_…` environment
//! variables, then command-line flags, each overriding the one before; then validation.
//!
//! Errors name the key and where its value came from (the file or the variable), because
//! an operator with three layers of configuration needs to know which one to fix.

use std::fmt;
use std::path::PathBuf;

use clap::Args;
use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};
use outpost_server::config::Config;

/// Prefix of the environment variables that override configuration keys.
const ENV_PREFIX: &str = "OUTPOST_";
/// Separates a section from its key in a variable name, as `.` does in TOML: a single `_`
/// cannot, because keys contain it (`OUTPOST_LIMITS__MAX_STANZA_BYTES`).
const ENV_SEPARATOR: &str = "__";
/// The variable that names the config file; it is a flag's default, not a key.
const CONFIG_FILE_VAR: &str = "OUTPOST_CONFIG";

/// Where the configuration comes from, shared by every command that needs it.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct ConfigArgs {
    /// TOML configuration file. Without one, Outpost runs zero-config: defaults and
    /// environment only, with in-band registration on unless set otherwise.
    #[arg(long, short = 'c', value_name = "FILE", env = CONFIG_FILE_VAR)]
    pub(crate) config: Option<PathBuf>,
    /// Data directory; overrides `data_dir` from the file and the environment.
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
}

/// A configuration that cannot be used. The binary exits with status 2 for it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    /// The file named by `--config` cannot be read.
    #[error("cannot read config file {}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A value does not fit its key, a key is unknown, the TOML is malformed, or a log
    /// filter does not parse.
    #[error("{}", Problems(.0))]
    Parse(Vec<String>),
    /// Values of the right types that do not make sense together.
    #[error("{}", Problems(.0.problems()))]
    Invalid(#[source] outpost_server::config::ConfigError),
}

/// Problems as the binary prints them: one on the line, several below it.
struct Problems<'a>(&'a [String]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            [one] => write!(f, "invalid configuration: {one}"),
            many => {
                write!(f, "invalid configuration:")?;
                for p in many {
                    write!(f, "\n  {p}")?;
                }
                Ok(())
            }
        }
    }
}

/// Loads and validates the configuration from the file, the process environment and the
/// flags.
pub(crate) fn load(args: &ConfigArgs) -> Result<Config, LoadError> {
    load_from(
        args,
        std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v))),
    )
}

/// [`load`] with the environment given, so tests need not change the process's.
fn load_from(
    args: &ConfigArgs,
    env: impl IntoIterator<Item = (String, std::ffi::OsString)>,
) -> Result<Config, LoadError> {
    let mut figment = Figment::new();
    if let Some(path) = &args.config {
        // Figment treats a missing file as empty; a mistyped path must not silently run
        // the defaults instead.
        std::fs::metadata(path).map_err(|source| LoadError::File {
            path: path.clone(),
            source,
        })?;
        figment = figment.merge(Toml::file_exact(path));
    }
    for (name, value) in env {
        if let Some(var) = EnvVar::parse(name, value) {
            figment = figment.merge(var);
        }
    }

    let mut config: Config = figment.extract().map_err(|e| describe(&figment, e))?;
    if let Some(file) = &args.config {
        relative_to_file(&mut config, file);
    }
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    if args.config.is_none() {
        // Zero-config: someone trying Outpost out needs an account to log in with, and
        // registering from the client is the quickest way to one.
        config.registration.enabled.get_or_insert(true);
    }
    config.validate().map_err(LoadError::Invalid)?;
    if let Err(e) = crate::logs::parse_filter(&config.log.level) {
        return Err(LoadError::Parse(vec![format!(
            "log.level: `{}` is not a valid filter ({e})",
            config.log.level
        )]));
    }
    Ok(config)
}

/// With a configuration file, relative paths in it (the data directory, the certificate,
/// the database) are relative to the file's directory, not to wherever the server was
/// started from: a service manager's working directory is nobody's choice.
fn relative_to_file(config: &mut Config, file: &std::path::Path) {
    let Some(base) = file.parent() else {
        return;
    };
    let base = if base.as_os_str().is_empty() {
        std::path::Path::new(".")
    } else {
        base
    };
    let anchor = |p: &mut PathBuf| {
        if p.is_relative() && !p.as_os_str().is_empty() {
            *p = base.join(&*p);
        }
    };
    anchor(&mut config.data_dir);
    for path in [
        &mut config.tls.cert,
        &mut config.tls.key,
        &mut config.storage.path,
    ]
    .into_iter()
    .flatten()
    {
        anchor(path);
    }
}

/// One `OUTPOST_…` variable, as its own provider so that errors can name the variable.
struct EnvVar {
    name: String,
    key: Vec<String>,
    value: Value,
}

impl EnvVar {
    /// The variable as a configuration key, or `None` when it is not one of ours.
    fn parse(name: String, value: std::ffi::OsString) -> Option<EnvVar> {
        let rest = name.strip_prefix(ENV_PREFIX)?;
        if name == CONFIG_FILE_VAR || rest.is_empty() {
            return None;
        }
        let key = rest
            .split(ENV_SEPARATOR)
            .map(str::to_ascii_lowercase)
            .collect();
        // The value syntax is figment's, close to TOML's: `true`, `10`, `["a", "b"]`,
        // and anything else is a string. A value that is not UTF-8 is kept lossily so
        // that the key's type check reports it rather than it vanishing.
        let value = value
            .to_string_lossy()
            .parse()
            .unwrap_or_else(|e| match e {});
        Some(EnvVar { name, key, value })
    }
}

impl Provider for EnvVar {
    fn metadata(&self) -> Metadata {
        Metadata::named("environment variable").source(Source::Custom(self.name.clone()))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut value = self.value.clone();
        for part in self.key.iter().skip(1).rev() {
            value = Value::from(Dict::from([(part.clone(), value)]));
        }
        let dict = Dict::from([(self.key[0].clone(), value)]);
        Ok(Map::from([(Profile::Default, dict)]))
    }
}

/// Turns figment's errors into one line each: the dotted key, what is wrong with it, and
/// where the value came from.
fn describe(figment: &Figment, error: figment::Error) -> LoadError {
    LoadError::Parse(
        error
            .into_iter()
            .map(|e| describe_one(figment, &e))
            .collect(),
    )
}

fn describe_one(figment: &Figment, e: &figment::Error) -> String {
    use figment::error::Kind;

    // For an unknown key, figment's path already ends with the key itself.
    let key = e.path.join(".");
    let what = match &e.kind {
        Kind::UnknownField(_, expected) => {
            format!("unknown key (expected one of: {})", expected.join(", "))
        }
        kind => kind.to_string(),
    };
    // The error's own metadata is that of the enclosing table for unknown keys, which may
    // have come from another layer; the key's own value knows where it came from.
    let metadata = figment.find_metadata(&key).or(e.metadata.as_ref());
    let origin = metadata.map(origin).unwrap_or_default();
    let mut line = if key.is_empty() {
        format!("{what}{origin}")
    } else {
        format!("{key}: {what}{origin}")
    };
    if matches!(e.kind, Kind::UnknownField(..))
        && metadata.is_some_and(|m| m.name == "environment variable")
    {
        line.push_str(&format!(
            "; sections and keys are separated by a double underscore, as in \
             {ENV_PREFIX}LIMITS{ENV_SEPARATOR}MAX_STANZA_BYTES"
        ));
    }
    line
}

fn origin(metadata: &Metadata) -> String {
    match &metadata.source {
        Some(Source::File(path)) => format!(" (in {})", path.display()),
        Some(Source::Custom(var)) => format!(" (from environment variable {var})"),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    /// Environment variables for a test, instead of the process's.
    type EnvList = BTreeMap<&'static str, &'static str>;

    /// The config file shipped as an example, checked against [`Config::default`].
    const EXAMPLE: &str = include_str!("../../../outpost.example.toml");

    /// Flattens a TOML document into its dotted keys, for comparing which keys two
    /// documents set.
    fn dotted_keys(value: &toml::Value) -> BTreeSet<String> {
        fn walk(prefix: &str, value: &toml::Value, out: &mut BTreeSet<String>) {
            match value {
                toml::Value::Table(table) => {
                    for (k, v) in table {
                        let key = if prefix.is_empty() {
                            k.clone()
                        } else {
                            format!("{prefix}.{k}")
                        };
                        walk(&key, v, out);
                    }
                }
                _ => {
                    out.insert(prefix.to_owned());
                }
            }
        }
        let mut out = BTreeSet::new();
        walk("", value, &mut out);
        out
    }

    fn with_file(text: &str, env: &EnvList) -> (tempfile::TempDir, Result<Config, LoadError>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outpost.toml");
        std::fs::write(&path, text).unwrap();
        let args = ConfigArgs {
            config: Some(path),
            data_dir: None,
        };
        let env = env.iter().map(|(k, v)| (k.to_string(), v.into()));
        let result = load_from(&args, env);
        (dir, result)
    }

    fn parse_problems(result: Result<Config, LoadError>) -> Vec<String> {
        match result {
            Err(LoadError::Parse(p)) => p,
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn example_file_shows_the_defaults() {
        let (dir, loaded) = with_file(EXAMPLE, &EnvList::new());
        let mut expected = Config::default();
        // A config file is present, so registration is not resolved to the zero-config
        // default; the example leaves it unset. Its relative data directory is the file's.
        expected.registration.enabled = None;
        expected.data_dir = dir.path().join(&expected.data_dir);
        assert_eq!(loaded.unwrap(), expected);
    }

    #[test]
    fn example_file_has_every_key() {
        let example: toml::Value = toml::from_str(EXAMPLE).unwrap();
        let default = toml::Value::try_from(Config::default()).unwrap();
        assert_eq!(dotted_keys(&example), dotted_keys(&default));
        // Keys without a default value are shown commented out.
        for key in ["# cert = ", "# key = ", "# path = ", "# enabled = "] {
            assert!(
                EXAMPLE.contains(key),
                "the example does not mention `{key}`"
            );
        }
    }

    #[test]
    fn zero_config_enables_registration() {
        let config = load_from(&ConfigArgs::default(), []).unwrap();
        assert!(config.registration_enabled());
        let (_dir, config) = with_file("", &EnvList::new());
        assert!(!config.unwrap().registration_enabled());
        let (_dir, config) = with_file("[registration]\nenabled = true\n", &EnvList::new());
        assert!(config.unwrap().registration_enabled());
    }

    #[test]
    fn environment_overrides_file_and_flag_overrides_both() {
        let env = EnvList::from([
            ("OUTPOST_LIMITS__MAX_STANZA_BYTES", "20000"),
            ("OUTPOST_DOMAINS", r#"["a.example", "b.example"]"#),
            ("OUTPOST_DATA_DIR", "/from/env"),
            ("OUTPOST_AUTH__ALLOW_PLAINTEXT_WITHOUT_TLS", "true"),
            ("OUTPOST_CONFIG", "ignored: it names the file"),
            ("OTHER_LIMITS__MAX_DEPTH", "1"),
        ]);
        let (_dir, config) =
            with_file("[limits]\nmax_stanza_bytes = 30000\nmax_depth = 32\n", &env);
        let config = config.unwrap();
        assert_eq!(config.limits.max_stanza_bytes, 20000);
        assert_eq!(config.limits.max_depth, 32);
        assert_eq!(config.domains, ["a.example", "b.example"]);
        assert_eq!(config.data_dir, PathBuf::from("/from/env"));
        assert!(config.auth.allow_plaintext_without_tls);

        let args = ConfigArgs {
            config: None,
            data_dir: Some("/from/flag".into()),
        };
        let env = env.iter().map(|(k, v)| (k.to_string(), v.into()));
        assert_eq!(
            load_from(&args, env).unwrap().data_dir,
            PathBuf::from("/from/flag")
        );
    }

    #[test]
    fn unknown_keys_are_named_with_their_origin() {
        let (dir, result) = with_file("[limits]\nmax_stanzas = 1\n", &EnvList::new());
        let problems = parse_problems(result);
        let file = dir.path().join("outpost.toml");
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with(
                "limits.max_stanzas: unknown key (expected one of: max_stanza_bytes, "
            ),
            "{problems:?}"
        );
        assert!(
            problems[0].ends_with(&format!("(in {})", file.display())),
            "{problems:?}"
        );

        let (_dir, result) = with_file("bogus = 1\n", &EnvList::new());
        assert!(parse_problems(result)[0].starts_with("bogus: unknown key"));

        // The section comes from the file, the stray key from the environment.
        let env = EnvList::from([("OUTPOST_LIMITS_MAX_DEPTH", "9")]);
        let (_dir, result) = with_file("[limits]\nmax_depth = 32\n", &env);
        let problems = parse_problems(result);
        assert!(
            problems[0].starts_with("limits_max_depth: unknown key"),
            "{problems:?}"
        );
        assert!(
            problems[0].contains("(from environment variable OUTPOST_LIMITS_MAX_DEPTH); sections"),
            "{problems:?}"
        );
    }

    #[test]
    fn bad_values_are_named_with_their_origin() {
        let (dir, result) = with_file("[limits]\nmax_stanza_bytes = \"big\"\n", &EnvList::new());
        let problems = parse_problems(result);
        assert_eq!(
            problems,
            [format!(
                "limits.max_stanza_bytes: invalid type: found string \"big\", expected usize (in {})",
                dir.path().join("outpost.toml").display()
            )]
        );

        let env = EnvList::from([("OUTPOST_LISTEN__C2S", "[\"nowhere\"]")]);
        let (_dir, result) = with_file("", &env);
        let problems = parse_problems(result);
        assert!(problems[0].starts_with("listen.c2s"), "{problems:?}");
        assert!(
            problems[0].ends_with("(from environment variable OUTPOST_LISTEN__C2S)"),
            "{problems:?}"
        );

        let (_dir, result) = with_file("[storage]\nbackend = \"mysql\"\n", &EnvList::new());
        assert!(parse_problems(result)[0].starts_with("storage.backend: unknown variant"));
    }

    #[test]
    fn syntax_errors_and_missing_files_are_reported() {
        let (_dir, result) = with_file("[limits\n", &EnvList::new());
        assert!(!parse_problems(result).is_empty());

        let args = ConfigArgs {
            config: Some("/nonexistent/outpost.toml".into()),
            data_dir: None,
        };
        let err = load_from(&args, []).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot read config file /nonexistent/outpost.toml: "),
            "{err}"
        );
    }

    #[test]
    fn invalid_combinations_are_reported_together() {
        let (_dir, result) = with_file("domains = []\n[limits]\nmax_depth = 2\n", &EnvList::new());
        let err = result.unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration:\n  domains must list at least one domain\n  \
             limits.max_depth must be between 8 and 1024"
        );

        let (_dir, result) = with_file("[log]\nlevel = \"info,=[\"\n", &EnvList::new());
        assert!(parse_problems(result)[0].starts_with("log.level: "));
    }

    #[test]
    fn relative_paths_in_a_file_are_relative_to_the_file() {
        let (dir, config) = with_file(
            "data_dir = \"state\"\n[tls]\ncert = \"c.pem\"\nkey = \"/etc/k.pem\"\n",
            &EnvList::new(),
        );
        let config = config.unwrap();
        assert_eq!(config.data_dir, dir.path().join("state"));
        assert_eq!(config.tls.cert, Some(dir.path().join("c.pem")));
        assert_eq!(config.tls.key, Some(PathBuf::from("/etc/k.pem")));
        // Without a file, relative paths stay relative to the working directory.
        let config = load_from(&ConfigArgs::default(), []).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("./outpost-data"));
    }

    #[test]
    fn listen_addresses_must_be_ip_addresses() {
        let (_dir, result) = with_file("[listen]\nc2s = [\"localhost:5222\"]\n", &EnvList::new());
        let problems = parse_problems(result);
        assert!(
            problems[0].starts_with(
                "listen.c2s: `localhost:5222` is not an IP address and port: write 127.0.0.1:5222"
            ),
            "{problems:?}"
        );
    }

    #[test]
    fn a_misspelt_log_level_is_refused() {
        let (_dir, result) = with_file("[log]\nlevel = \"inf\"\n", &EnvList::new());
        let problems = parse_problems(result);
        assert!(
            problems[0].starts_with("log.level: `inf` is not a valid filter (`inf` is not a level"),
            "{problems:?}"
        );
    }

    #[test]
    fn default_config_round_trips_through_toml() {
        let text = toml::to_string_pretty(&Config::default()).unwrap();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, Config::default());
    }
}
