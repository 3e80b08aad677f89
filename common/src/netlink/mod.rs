//! Synchronous rtnetlink: a socket with sequence checks and acks, and typed operations.
