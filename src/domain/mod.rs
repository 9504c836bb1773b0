//! The value types the store and the pipeline share, below both: the message key, a validated
//! case, its SSN and
//! money amounts (each a newtype with one parse), the stable error codes and the intake error,
//! the matching rules and candidates, and an event with its resolution. Nothing here does I/O
//! or knows the pipeline.

pub mod case;
pub mod error;
pub mod event;
pub mod key;
pub mod matching;
pub mod money;
pub mod ssn;
pub mod text;
