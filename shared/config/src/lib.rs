//! crisp's configuration: one TOML file shared by every service (default
//! `/etc/crisp/config.toml`, optional), built-in defaults for every field, and a command-line
//! flag plus environment variable for every field. Precedence, lowest first: defaults, the
//! file, environment variables, flags.
//!
//! Every field is documented in the README; keep the two in step.

mod args;
mod model;
mod validate;

pub use args::ConfigArgs;
pub use model::*;

use std::path::{Path, PathBuf};

/// The file read when `--config` / `CRISP_CONFIG` names none. Its absence is not an error.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/crisp/config.toml";

/// Why a configuration could not be loaded. Every variant names the file or field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config field `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl Config {
    /// Loads the configuration a service starts with: defaults, then the file the arguments
    /// name (or the default file when it exists), then the overrides from flags and
    /// environment, then checks the result.
    pub fn load(args: &ConfigArgs) -> Result<Config, ConfigError> {
        let mut config = match &args.config {
            Some(path) => Config::from_file(path)?,
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => Config::from_file(Path::new(DEFAULT_CONFIG_PATH))?,
            None => Config::default(),
        };
        args.apply(&mut config);
        config.validate()?;
        Ok(config)
    }

    /// Parses one TOML file; fields it leaves out keep their defaults. Unknown fields are
    /// rejected so that a typo is not silently ignored.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Config::from_toml(&text).map_err(|message| ConfigError::Parse { path: path.to_path_buf(), message })
    }

    /// Parses TOML text; the error message names the field and line at fault.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', " "))
    }
}

#[cfg(test)]
mod tests;
