//! One module per subcommand, each a clap struct with an `execute()`.

pub mod compile;
pub mod map;
pub mod run;
pub mod tasks;
