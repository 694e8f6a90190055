//! An image's `User`, resolved against the image's own `/etc/passwd` and `/etc/group` as its merged root shows
//! them: the name, uid and gid a sandbox's executions run as.
//!
//! The files are read from the store's unpacked layers as [`crate::merged`] looks them up (a regular file reached
//! without a symbolic link, from the top-most layer that has it), at most [`MAX_ACCOUNT_FILE`] bytes of each.

use crate::store::{ImageRecord, Store, StoreError};

/// The most of `/etc/passwd` or `/etc/group` read.
pub const MAX_ACCOUNT_FILE: u64 = 1 << 20;

/// The account an image's `User` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageUser {
    /// Its name: from `/etc/passwd`, or `u<uid>` for a uid the image doesn't list.
    pub name: String,
    /// Its uid inside the sandbox.
    pub uid: u32,
    /// Its gid inside the sandbox.
    pub gid: u32,
}

/// Why an image's `User` can't be used.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The user or group is not in the image's files.
    #[error("the image's User {spec:?} names {what} {name:?}, which its /etc/{file} doesn't list")]
    Unknown {
        /// The whole `User` value.
        spec: String,
        /// `user` or `group`.
        what: &'static str,
        /// The name.
        name: String,
        /// `passwd` or `group`.
        file: &'static str,
    },
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// The account `image`'s `User` names, or `None` when it names none or root (`""`, `root`, `0`, `0:0`).
    ///
    /// # Errors
    /// [`UserError::Unknown`] for a name the image's files don't list; [`UserError::Store`] when a layer can't be
    /// read.
    pub fn image_user(&self, image: &ImageRecord) -> Result<Option<ImageUser>, UserError> {
        let Some(spec) = image.config.user.as_deref().map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        let (user, group) = spec.split_once(':').map_or((spec, None), |(u, g)| (u, Some(g)));
        let root = self.merged_root(image)?;
        let passwd = root.file(&["etc", "passwd"], MAX_ACCOUNT_FILE).unwrap_or_default();
        let unknown =
            |what, name: &str, file| UserError::Unknown { spec: spec.to_owned(), what, name: name.to_owned(), file };
        let (name, uid, primary_gid) = match user.parse::<u32>() {
            Ok(uid) => match account_lines(&passwd).find(|f| f.get(2).and_then(|u| u.parse().ok()) == Some(uid)) {
                Some(f) => (f[0].to_owned(), uid, f.get(3).and_then(|g| g.parse().ok()).unwrap_or(uid)),
                None => (format!("u{uid}"), uid, uid),
            },
            Err(_) => {
                let fields =
                    account_lines(&passwd).find(|f| f[0] == user).ok_or_else(|| unknown("user", user, "passwd"))?;
                let number = |i: usize| fields.get(i).and_then(|v| v.parse::<u32>().ok());
                let (Some(uid), Some(gid)) = (number(2), number(3)) else {
                    return Err(unknown("user", user, "passwd"));
                };
                (user.to_owned(), uid, gid)
            }
        };
        let gid = match group {
            None | Some("") => primary_gid,
            Some(g) => match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => {
                    let groups = root.file(&["etc", "group"], MAX_ACCOUNT_FILE).unwrap_or_default();
                    account_lines(&groups)
                        .find(|f| f[0] == g)
                        .and_then(|f| f.get(2).and_then(|v| v.parse().ok()))
                        .ok_or_else(|| unknown("group", g, "group"))?
                }
            },
        };
        if uid == 0 {
            return Ok(None);
        }
        Ok(Some(ImageUser { name, uid, gid }))
    }
}

/// The `:`-separated fields of each entry of a passwd or group file (comments and blank lines skipped).
fn account_lines(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')).map(|l| l.split(':').collect())
}
