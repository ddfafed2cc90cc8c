//! The only code that knows YAML.

pub mod model;
pub mod schema;
