//! The flow policy: which containers may send what to which, by identity.
//! Checked (`crossmon policy check`), learnt from traffic (`crossmon policy
//! learn`), compiled into the kernel maps the classifiers read, and put
//! in force by the agent (`crossmon run --policy`).

pub mod alerts;
pub mod check;
pub mod compile;
pub mod evaluate;
pub mod file;
pub mod in_force;
pub mod learn;
pub mod select;

pub use alerts::ViolationAlerts;
pub use file::{Action, Policy};
pub use in_force::{PolicyConfig, PolicyInForce};
pub use learn::{Learner, Learning};
