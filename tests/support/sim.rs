//! Placeholder: written by the simulated-manager work.
