//! The only code that knows YAML.

#[allow(dead_code)]
mod locate;
pub mod model;
pub mod schema;
