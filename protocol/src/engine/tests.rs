//! Tests of the contract engine: the document checks, scenarios of the two machines driven by
//! hand, and a deterministic simulation of both sides under message loss, reordering, crashes
//! and full disks.

mod checks;
mod scenarios;
mod sim;
