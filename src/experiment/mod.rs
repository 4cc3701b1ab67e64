//! The experiment of the original programs on a real local cluster: the built-in workload, the `dmutex
//! cluster` runner, its verdict, reports and charts. Sits on top: nothing else in the crate imports it.

pub mod charts;
pub(crate) mod error;
pub mod report;
pub mod runner;
pub mod verdict;
pub mod workload;
