//! Logging: the filter (`log.level`, or `RUST_LOG`), checked strictly; text or JSON lines on
//! standard error; and a handle that changes the filter on reload.

use std::io::IsTerminal as _;

use outpost_server::config::{LogConfig, LogFormat};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::load::LoadError;

const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Parses a filter, refusing what `EnvFilter` would take silently: a bare word that is not a
/// level is a target for `EnvFilter` (`"inf"` would mean "everything from a module named
/// inf"), which in a configuration file is almost always a typo. Targets are written
/// `target=level`.
pub(crate) fn parse_filter(spec: &str) -> Result<EnvFilter, String> {
    for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bare = !directive.contains(['=', '[']);
        if bare && !LEVELS.contains(&directive.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "`{directive}` is not a level (one of {}); write a target as target=level",
                LEVELS.join(", ")
            ));
        }
    }
    EnvFilter::try_new(spec).map_err(|e| e.to_string())
}

/// The filter in force: `RUST_LOG` when set (the usual way to debug one run without editing
/// files), else `level`. Named by where it came from in errors.
fn effective_filter(level: &str) -> Result<EnvFilter, LoadError> {
    let (source, spec) = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => ("RUST_LOG", spec),
        _ => ("log.level", level.to_owned()),
    };
    parse_filter(&spec).map_err(|e| {
        LoadError::Parse(vec![format!(
            "{source}: `{spec}` is not a valid filter ({e})"
        )])
    })
}

/// Changes the running filter.
pub(crate) struct Logs {
    filter: reload::Handle<EnvFilter, Registry>,
    format: LogFormat,
}

impl Logs {
    /// Applies `log` from a reloaded configuration; the format takes a restart.
    pub(crate) fn reload(&self, log: &LogConfig) -> anyhow::Result<Option<&'static str>> {
        let filter = effective_filter(&log.level)?;
        self.filter.reload(filter)?;
        Ok((log.format != self.format).then_some("log.format"))
    }
}

/// Logs to standard error, as `log` says, for `outpost serve`.
pub(crate) fn install(log: &LogConfig) -> Result<Logs, LoadError> {
    let (filter, handle) = reload::Layer::new(effective_filter(&log.level)?);
    let registry = tracing_subscriber::registry().with(filter);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match log.format {
        LogFormat::Text => registry
            .with(fmt.with_ansi(std::io::stderr().is_terminal()))
            .init(),
        LogFormat::Json => registry.with(fmt.json().with_ansi(false)).init(),
    }
    Ok(Logs {
        filter: handle,
        format: log.format,
    })
}

/// Warnings and errors only, for the administrative commands, which print their own result.
pub(crate) fn install_for_commands() -> Result<(), LoadError> {
    tracing_subscriber::fmt()
        .with_env_filter(effective_filter("warn")?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_filter;

    #[test]
    fn typos_in_levels_are_refused_and_targets_need_a_level() {
        assert!(parse_filter("info").is_ok());
        assert!(parse_filter("warn,outpost_server=debug").is_ok());
        assert!(parse_filter("INFO").is_ok());
        let err = parse_filter("inf").unwrap_err();
        assert!(err.starts_with("`inf` is not a level"), "{err}");
        assert!(parse_filter("info,outpost_server").is_err());
        assert!(parse_filter("info,=[").is_err());
    }
}
