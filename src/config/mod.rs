//! The only code that knows YAML.
//!
//! [`load`] and [`parse`] turn a `certgate.yaml` into a validated [`model::Config`] or into every
//! [`Problem`] found, each with the place an operator should look: `file:line:column: field:
//! message`. Nothing here opens certificate files; the TLS loader reports those with
//! [`Place::File`] through the same [`Problem`] type, so `certgate check` prints one list.

use std::fmt;
use std::path::{Path, PathBuf};

pub mod diff;
mod indent;
mod locate;
pub mod model;
pub mod published;
pub mod schema;
mod validate;
pub mod watch;
mod yaml;

/// Where a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// A value in the YAML file. `line` and `column` are 1-based; `field` is the dotted path
    /// (`routes[1].upstream`), empty when the problem is not about a field (a syntax error).
    Yaml {
        file: PathBuf,
        line: usize,
        column: usize,
        field: String,
    },
    /// A whole file: the config file that could not be read, or a certificate, key or CRL.
    File(PathBuf),
    /// Nowhere in particular.
    None,
}

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{place}{message}")]
pub struct Problem {
    pub place: Place,
    /// Short and lower-case, without the place.
    pub message: String,
}

/// Every problem found in one configuration, in file order; never empty when returned by
/// [`load`] or [`parse`].
///
/// Displays one problem per line, so a CLI can print it as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Problems {
    problems: Vec<Problem>,
}

/// Reads and validates the configuration file at `path`.
///
/// Relative paths in the file are resolved against the file's folder. With a `lifecycle:`
/// section, the registry's published partners and its CA's trust bundle are merged in.
///
/// # Errors
/// An unreadable file is one [`Place::File`] problem carrying the OS error; otherwise see
/// [`parse`].
pub fn load(path: &Path) -> Result<model::Config, Problems> {
    let mut config = parse(&read(path)?, path)?;
    published::merge(&mut config)?;
    Ok(config)
}

fn read(path: &Path) -> Result<String, Problems> {
    std::fs::read_to_string(path).map_err(|err| {
        Problems::from(Problem {
            place: Place::File(path.to_owned()),
            message: format!("cannot read the configuration file: {err}"),
        })
    })
}

/// Validates configuration `text` that was read from `source`.
///
/// `source` names the file in problems and anchors relative paths; it is not read.
///
/// # Errors
/// Bad YAML syntax or a value of the wrong shape (a typo'd field name, a list where a string
/// belongs) stops at that one problem, because serde cannot go on from it. Otherwise every
/// semantic problem in the file is reported together.
pub fn parse(text: &str, source: &Path) -> Result<model::Config, Problems> {
    validate::parse(text, source)
}

/// A valid configuration and the warnings about it: what will likely bite later (see
/// [`parse_checked`]). Warnings never stop a configuration from loading.
#[derive(Debug, Clone)]
pub struct Checked {
    pub config: model::Config,
    pub warnings: Vec<Problem>,
}

/// [`load`], with warnings.
///
/// # Errors
/// As [`load`].
pub fn load_checked(path: &Path) -> Result<Checked, Problems> {
    let mut checked = parse_checked(&read(path)?, path)?;
    published::merge(&mut checked.config)?;
    Ok(checked)
}

/// [`parse`], with warnings about a valid configuration: a scope granted to partners that no
/// route requires, a route scope no partner holds, a trust bundle without a CRL or OCSP, and
/// identity claims of two partners that one certificate commonly carries together.
///
/// # Errors
/// As [`parse`].
pub fn parse_checked(text: &str, source: &Path) -> Result<Checked, Problems> {
    validate::parse_checked(text, source)
}

// === impl Place ===

impl fmt::Display for Place {
    /// Includes the trailing `: ` separator, so that [`Place::None`] prints nothing at all.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Yaml {
                file,
                line,
                column,
                field,
            } => {
                write!(f, "{}:{line}:{column}: ", file.display())?;
                if !field.is_empty() {
                    write!(f, "{field}: ")?;
                }
                Ok(())
            }
            Place::File(file) => write!(f, "{}: ", file.display()),
            Place::None => Ok(()),
        }
    }
}

// === impl Problem ===

impl Problem {
    /// A problem with a whole file: how the certificate, key and CRL loaders report a file that
    /// does not read or parse, so that `certgate check` lists them with the YAML problems.
    pub fn in_file(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self {
            place: Place::File(file.into()),
            message: message.into(),
        }
    }
}

// === impl Problems ===

impl Problems {
    pub fn new(problems: Vec<Problem>) -> Self {
        Self { problems }
    }

    pub fn as_slice(&self) -> &[Problem] {
        &self.problems
    }

    pub fn into_vec(self) -> Vec<Problem> {
        self.problems
    }

    pub fn len(&self) -> usize {
        self.problems.len()
    }

    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Problem> {
        self.problems.iter()
    }
}

impl From<Problem> for Problems {
    fn from(problem: Problem) -> Self {
        Self::new(vec![problem])
    }
}

impl From<Vec<Problem>> for Problems {
    fn from(problems: Vec<Problem>) -> Self {
        Self::new(problems)
    }
}

impl IntoIterator for Problems {
    type Item = Problem;
    type IntoIter = std::vec::IntoIter<Problem>;

    fn into_iter(self) -> Self::IntoIter {
        self.problems.into_iter()
    }
}

impl<'a> IntoIterator for &'a Problems {
    type Item = &'a Problem;
    type IntoIter = std::slice::Iter<'a, Problem>;

    fn into_iter(self) -> Self::IntoIter {
        self.problems.iter()
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_place_prints_in_the_form_an_editor_can_jump_to() {
        let yaml = Problem {
            place: Place::Yaml {
                file: PathBuf::from("gw.yaml"),
                line: 3,
                column: 7,
                field: "routes[1].upstream".to_owned(),
            },
            message: "unknown upstream `x`".to_owned(),
        };
        assert_eq!(
            yaml.to_string(),
            "gw.yaml:3:7: routes[1].upstream: unknown upstream `x`"
        );
        let syntax = Problem {
            place: Place::Yaml {
                file: PathBuf::from("gw.yaml"),
                line: 1,
                column: 2,
                field: String::new(),
            },
            message: "bad".to_owned(),
        };
        assert_eq!(syntax.to_string(), "gw.yaml:1:2: bad");
        let file = Problem::in_file("certs/a.pem", "no certificate found");
        assert_eq!(file.to_string(), "certs/a.pem: no certificate found");
        let nowhere = Problem {
            place: Place::None,
            message: "no partners".to_owned(),
        };
        assert_eq!(nowhere.to_string(), "no partners");
        let all = Problems::new(vec![yaml, file]);
        assert_eq!(all.to_string().lines().count(), 2);
    }
}
