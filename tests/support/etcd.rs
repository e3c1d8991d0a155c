//! Placeholder: written by the etcd backend work.
