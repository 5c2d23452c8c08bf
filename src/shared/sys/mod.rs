//! The only module allowed to use `unsafe`: pre-exec hooks and process-level system calls.
#![allow(unsafe_code)]
