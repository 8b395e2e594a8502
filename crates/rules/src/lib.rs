//! Rules: Prometheus rule files ([`RuleFile`]), alert templates
//! ([`template`]), the evaluator that runs groups of recording and
//! alerting rules over a store and keeps alert state across restarts
//! ([`Manager`]), and the rules database — rule namespaces managed through
//! an API, stored durably and versioned ([`RulesDb`]) — with the HTTP
//! routes of both ([`http`]).

mod db;
mod eval;
mod file;
pub mod http;
pub mod template;

pub use db::{DbError, RulesDb, Version};
pub use eval::{
    ActiveAlert, Alert, AlertState, Appendable, Context, GroupStatus, Health, Manager, Notifier,
    Options, RuleStatus,
};
pub use file::{
    BaselineSpec, Dur, FileError, GroupSpec, Problem, RuleFile, RuleSpec, format_duration,
};
