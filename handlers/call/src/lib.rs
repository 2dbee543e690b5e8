//! Alknet call service.
#![forbid(unsafe_code)]
