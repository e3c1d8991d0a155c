//! `--allow` and `--read-only`: which API sections a listener serves, and whether it serves
//! anything but `GET` and `HEAD`. The sections are docker-socket-proxy's (its HAProxy
//! rules match the path's first segment after the version), plus `archive`, split out of
//! `containers`: `/containers/{id}/archive` and `/export` read or write a container's
//! files, which `CONTAINERS=1 POST=0` lets through there (its issue 182).

use std::collections::BTreeSet;

use async_trait::async_trait;

use super::{Call, Check, Deny, Inspect, PolicySettings, Section};

/// The section of a normalised path (no version prefix); `None` for a path in none of them
/// (refused when `--allow` is given).
pub fn section_of(plain: &str) -> Option<Section> {
    let mut segments = plain.split('/').filter(|s| !s.is_empty());
    let first = segments.next()?;
    if first == "containers" {
        let _id = segments.next();
        if matches!(segments.next(), Some("archive" | "export")) && segments.next().is_none() {
            return Some(Section::Archive);
        }
        return Some(Section::Containers);
    }
    if first == "_ping" {
        return Some(Section::Ping);
    }
    Section::parse(first).filter(|s| *s != Section::Archive && *s != Section::Ping)
}

/// The check of `--allow` and `--read-only`.
pub struct Sections {
    allow: Option<BTreeSet<Section>>,
    read_only: bool,
}

impl Sections {
    /// `None` when neither is given.
    pub fn new(settings: &PolicySettings) -> Option<Self> {
        (settings.allow.is_some() || settings.read_only).then(|| Self {
            allow: settings.allow.clone(),
            read_only: settings.read_only,
        })
    }

    fn decide(&self, call: &Call) -> Result<(), Deny> {
        if self.read_only && !matches!(call.method.as_str(), "GET" | "HEAD") {
            return Err(Deny::forbidden(
                "read-only",
                format!(
                    "{} {} is refused: this listener is read-only (--read-only)",
                    call.method, call.plain
                ),
            ));
        }
        if let Some(allow) = &self.allow {
            match section_of(&call.plain) {
                Some(section) if allow.contains(&section) => {}
                Some(section) => {
                    return Err(Deny::forbidden(
                        "section",
                        format!(
                            "{} {} is refused: section {section} is not allowed on this \
                             listener (--allow)",
                            call.method, call.plain
                        ),
                    ))
                }
                None => {
                    return Err(Deny::forbidden(
                        "section",
                        format!(
                            "{} {} is refused: it is in no API section (--allow)",
                            call.method, call.plain
                        ),
                    ))
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Check for Sections {
    fn wants_body(&self, _call: &Call) -> bool {
        false
    }

    async fn check(&self, call: &mut Call, _inspect: &dyn Inspect) -> Result<(), Deny> {
        self.decide(call)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_is_split_out_of_containers() {
        assert_eq!(section_of("/containers/x/archive"), Some(Section::Archive));
        assert_eq!(section_of("/containers/x/export"), Some(Section::Archive));
        assert_eq!(
            section_of("/containers/archive/json"),
            Some(Section::Containers)
        );
        assert_eq!(section_of("/containers/json"), Some(Section::Containers));
        assert_eq!(section_of("/_ping"), Some(Section::Ping));
        assert_eq!(section_of("/ping"), None);
        assert_eq!(section_of("/archive"), None);
        assert_eq!(section_of("/exec/x/start"), Some(Section::Exec));
        assert_eq!(section_of("/"), None);
    }
}
