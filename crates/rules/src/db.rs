//! The rules database: rule groups managed through the API, in
//! namespaces (as Cortex and Mimir rulers keep them, so `mimirtool rules`
//! and `cortextool rules` work), each change validated, written durably
//! (temporary file, fsync, rename) and kept as a numbered version that
//! can be read back or restored.
//!
//! Layout: `<dir>/current/<namespace>.json` holds a namespace's groups with
//! its version; `<dir>/history/<namespace>/<version>.json` every version.
//! Namespaces are percent-encoded into file names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::file::{FileError, GroupSpec, RuleFile};

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The rules do not validate.
    #[error("invalid rules: {0}")]
    Invalid(#[from] FileError),
    /// No such namespace, group or version.
    #[error("{0} not found")]
    NotFound(String),
    /// A bad namespace or group name.
    #[error("{0}")]
    BadName(String),
    /// Disk trouble.
    #[error("rules database at {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// A version of a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// Increases by one with every change of the namespace.
    pub version: u64,
    /// When it was made (ms since the epoch).
    pub updated_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    version: Version,
    /// Empty for a deleted namespace (a version of its own).
    groups: Vec<GroupSpec>,
}

/// The rules database.
#[derive(Debug)]
pub struct RulesDb {
    dir: PathBuf,
    current: Mutex<BTreeMap<String, Stored>>,
}

fn encode(ns: &str) -> String {
    let mut out = String::new();
    for b in ns.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn decode(name: &str) -> Option<String> {
    let b = name.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DbError + '_ {
    move |source| DbError::Io {
        path: path.to_owned(),
        source,
    }
}

fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), DbError> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

impl RulesDb {
    /// Opens (creating) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, DbError> {
        let cur = dir.join("current");
        std::fs::create_dir_all(&cur).map_err(io(&cur))?;
        let mut current = BTreeMap::new();
        for e in std::fs::read_dir(&cur).map_err(io(&cur))? {
            let e = e.map_err(io(&cur))?;
            let path = e.path();
            let Some(stem) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            let Some(ns) = decode(stem) else { continue };
            let text = std::fs::read(&path).map_err(io(&path))?;
            let s: Stored = serde_json::from_slice(&text).map_err(|e| DbError::Io {
                path: path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?;
            current.insert(ns, s);
        }
        Ok(Self {
            dir: dir.to_owned(),
            current: Mutex::new(current),
        })
    }

    /// Every namespace with its rules, as the evaluator takes them.
    pub fn rule_files(&self) -> Vec<(String, RuleFile)> {
        self.current
            .lock()
            .iter()
            .filter(|(_, s)| !s.groups.is_empty())
            .map(|(ns, s)| {
                (
                    ns.clone(),
                    RuleFile {
                        groups: s.groups.clone(),
                    },
                )
            })
            .collect()
    }

    /// A namespace's current groups and version.
    pub fn get(&self, ns: &str) -> Option<(Version, Vec<GroupSpec>)> {
        self.current
            .lock()
            .get(ns)
            .filter(|s| !s.groups.is_empty())
            .map(|s| (s.version, s.groups.clone()))
    }

    /// Creates or replaces the group of `group.name` in `ns`.
    pub fn put_group(&self, ns: &str, group: GroupSpec) -> Result<Version, DbError> {
        check_name("namespace", ns)?;
        check_name("group name", &group.name)?;
        self.change(ns, |groups| {
            match groups.iter_mut().find(|g| g.name == group.name) {
                Some(g) => *g = group,
                None => groups.push(group),
            }
            Ok(())
        })
    }

    /// Deletes the group `name` of `ns`.
    pub fn delete_group(&self, ns: &str, name: &str) -> Result<Version, DbError> {
        self.change(ns, |groups| {
            let before = groups.len();
            groups.retain(|g| g.name != name);
            if groups.len() == before {
                return Err(DbError::NotFound(format!(
                    "group {name:?} of namespace {ns:?}"
                )));
            }
            Ok(())
        })
    }

    /// Deletes every group of `ns` (a new, empty version).
    pub fn delete_namespace(&self, ns: &str) -> Result<Version, DbError> {
        self.change(ns, |groups| {
            if groups.is_empty() {
                return Err(DbError::NotFound(format!("namespace {ns:?}")));
            }
            groups.clear();
            Ok(())
        })
    }

    /// The versions of `ns`, oldest first.
    pub fn versions(&self, ns: &str) -> Vec<Version> {
        let dir = self.dir.join("history").join(encode(ns));
        let mut out: Vec<Version> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice::<Stored>(&b).ok())
            .map(|s| s.version)
            .collect();
        out.sort_by_key(|v| v.version);
        out
    }

    /// The groups of `ns` at `version`.
    pub fn at_version(&self, ns: &str, version: u64) -> Result<Vec<GroupSpec>, DbError> {
        let path = self.history_path(ns, version);
        let b = std::fs::read(&path)
            .map_err(|_| DbError::NotFound(format!("version {version} of namespace {ns:?}")))?;
        serde_json::from_slice::<Stored>(&b)
            .map(|s| s.groups)
            .map_err(|e| DbError::Io {
                path,
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })
    }

    /// Makes `version`'s groups current again (as a new version).
    pub fn restore(&self, ns: &str, version: u64) -> Result<Version, DbError> {
        let old = self.at_version(ns, version)?;
        self.change(ns, |groups| {
            *groups = old;
            Ok(())
        })
    }

    fn history_path(&self, ns: &str, version: u64) -> PathBuf {
        self.dir
            .join("history")
            .join(encode(ns))
            .join(format!("{version:010}.json"))
    }

    fn change(
        &self,
        ns: &str,
        f: impl FnOnce(&mut Vec<GroupSpec>) -> Result<(), DbError>,
    ) -> Result<Version, DbError> {
        let mut cur = self.current.lock();
        let old = cur.get(ns);
        let mut groups = old.map(|s| s.groups.clone()).unwrap_or_default();
        let prev = old.map(|s| s.version.version).unwrap_or(0);
        f(&mut groups)?;
        let file = RuleFile { groups };
        let problems = file.check();
        if !problems.is_empty() {
            return Err(DbError::Invalid(FileError {
                file: Some(format!("namespace {ns:?}")),
                problems,
            }));
        }
        let stored = Stored {
            version: Version {
                version: prev + 1,
                updated_ms: crate::eval::now_ms(),
            },
            groups: file.groups,
        };
        let bytes = serde_json::to_vec_pretty(&stored).map_err(|e| DbError::Io {
            path: self.dir.clone(),
            source: std::io::Error::other(e),
        })?;
        // History first: a crash between the two leaves the previous
        // current version, and the next change overwrites the orphan.
        write_durably(&self.history_path(ns, stored.version.version), &bytes)?;
        write_durably(
            &self
                .dir
                .join("current")
                .join(format!("{}.json", encode(ns))),
            &bytes,
        )?;
        let v = stored.version;
        cur.insert(ns.to_owned(), stored);
        Ok(v)
    }
}

fn check_name(what: &str, s: &str) -> Result<(), DbError> {
    if s.is_empty() || s.len() > 256 || s.chars().any(char::is_control) {
        return Err(DbError::BadName(format!(
            "{what} {s:?} must be 1 to 256 printable characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &str, expr: &str) -> GroupSpec {
        RuleFile::parse(&format!(
            "groups:\n- name: {name}\n  rules:\n  - alert: A\n    expr: {expr}\n"
        ))
        .unwrap()
        .groups
        .remove(0)
    }

    #[test]
    fn changes_are_versioned_durable_and_restorable() {
        let dir = tempfile::tempdir().unwrap();
        let db = RulesDb::open(dir.path()).unwrap();
        assert_eq!(
            db.put_group("team/web", group("g1", "up == 0"))
                .unwrap()
                .version,
            1
        );
        assert_eq!(
            db.put_group("team/web", group("g2", "up == 1"))
                .unwrap()
                .version,
            2
        );
        assert_eq!(
            db.put_group("team/web", group("g1", "up > 1"))
                .unwrap()
                .version,
            3
        );
        let (v, groups) = db.get("team/web").unwrap();
        assert_eq!(v.version, 3);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].rules[0].expr, "up > 1");
        // A bad change is refused and changes nothing.
        let mut bad = group("g3", "up");
        bad.rules[0].expr = "sum(".into();
        let e = db.put_group("team/web", bad).unwrap_err();
        assert!(e.to_string().contains("does not parse"), "{e}");
        assert_eq!(db.get("team/web").unwrap().0.version, 3);
        drop(db);
        // Reopened, everything is there; old versions can come back.
        let db = RulesDb::open(dir.path()).unwrap();
        assert_eq!(db.get("team/web").unwrap().0.version, 3);
        assert_eq!(
            db.versions("team/web")
                .iter()
                .map(|v| v.version)
                .collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(db.at_version("team/web", 1).unwrap().len(), 1);
        assert_eq!(db.restore("team/web", 1).unwrap().version, 4);
        assert_eq!(db.get("team/web").unwrap().1.len(), 1);
        db.delete_group("team/web", "g1").unwrap();
        assert!(db.get("team/web").is_none());
        assert!(db.rule_files().is_empty());
        assert!(matches!(
            db.delete_namespace("team/web"),
            Err(DbError::NotFound(_))
        ));
        assert!(matches!(
            db.delete_group("nope", "g"),
            Err(DbError::NotFound(_))
        ));
    }

    #[test]
    fn namespace_names_survive_encoding() {
        for ns in ["a", "team/web", "ünïcode ns", "%41"] {
            assert_eq!(decode(&encode(ns)).as_deref(), Some(ns));
        }
    }
}
