//! Alknet sans-IO codecs.
