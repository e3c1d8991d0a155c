//! [`Secret`]: text that must never be printed, like `kv.password`. It is its own type so
//! that a Debug print or a log line of the options or the settings cannot leak it, whoever
//! adds the print.

use std::fmt;

/// A value that must not be shown: `Debug` and `Display` print `***`. [`Secret::expose`] is
/// the one way to the text, for the code that hands it to the store.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// How clap and the file layer build one from the text given.
impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_stars_and_exposes_the_text() {
        let secret = Secret::from("hunter2".to_string());
        assert_eq!(
            format!("{secret} {secret:?} {:?}", [&secret]),
            "*** *** [***]"
        );
        assert_eq!(secret.expose(), "hunter2");
    }
}
