//! Alknet core.
