//! The identity of the container's process. The user is the request's (`run_as_username`, else
//! `run_as_user`, with `run_as_group`), else the image's USER (`user[:group]`, numeric or named);
//! names are resolved in the image's `/etc/passwd` and `/etc/group`, and a numeric user found
//! there takes its primary group from it. The supplemental groups are the primary group, then,
//! with the Merge policy, the image's groups that list the user, then the request's, each once.

use super::{ImageFiles, ProcessUser, SpecError};
use crisp_proto::cri::{LinuxContainerSecurityContext, SupplementalGroupsPolicy};

/// One `/etc/passwd` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// One `/etc/group` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// The well-formed entries of an `/etc/passwd` (comments and broken lines are skipped, as libc does).
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 4 || fields[0].is_empty() {
                return None;
            }
            Some(PasswdEntry { name: fields[0].into(), uid: fields[2].parse().ok()?, gid: fields[3].parse().ok()? })
        })
        .collect()
}

/// The well-formed entries of an `/etc/group`.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 3 || fields[0].is_empty() {
                return None;
            }
            let members = fields
                .get(3)
                .map(|m| m.split(',').map(str::trim).filter(|m| !m.is_empty()).map(String::from).collect())
                .unwrap_or_default();
            Some(GroupEntry { name: fields[0].into(), gid: fields[2].parse().ok()?, members })
        })
        .collect()
}

fn id(field: &str, value: i64) -> Result<u32, SpecError> {
    u32::try_from(value)
        .map_err(|_| SpecError::Invalid { field: field.into(), reason: format!("{value} is not a valid id") })
}

/// Where the user came from, to name the field in an error.
struct UserSpec<'a> {
    field: &'static str,
    user: String,
    group: Option<(&'a str, String)>,
}

/// The process's identity for the request's security context and the image's `USER`.
pub fn resolve(
    sc: Option<&LinuxContainerSecurityContext>,
    image_user: Option<&str>,
    files: &ImageFiles,
) -> Result<ProcessUser, SpecError> {
    let passwd = parse_passwd(files.passwd.as_deref().unwrap_or(""));
    let groups = parse_group(files.group.as_deref().unwrap_or(""));

    let run_as_username = sc.map(|s| s.run_as_username.as_str()).filter(|n| !n.is_empty());
    let run_as_user = sc.and_then(|s| s.run_as_user.as_ref()).map(|v| v.value);
    let run_as_group = sc.and_then(|s| s.run_as_group.as_ref()).map(|v| v.value);

    let spec = match (run_as_username, run_as_user) {
        (Some(name), _) => UserSpec {
            field: "linux.security_context.run_as_username",
            user: name.into(),
            group: run_as_group.map(|g| ("linux.security_context.run_as_group", g.to_string())),
        },
        (None, Some(uid)) => UserSpec {
            field: "linux.security_context.run_as_user",
            user: id("linux.security_context.run_as_user", uid)?.to_string(),
            group: run_as_group.map(|g| ("linux.security_context.run_as_group", g.to_string())),
        },
        (None, None) => {
            if run_as_group.is_some() {
                return Err(SpecError::Invalid {
                    field: "linux.security_context.run_as_group".into(),
                    reason: "is set without run_as_user or run_as_username".into(),
                });
            }
            let image_user = image_user.unwrap_or("");
            let (user, group) = match image_user.split_once(':') {
                Some((u, g)) => (u, Some(("image.config.User", g.to_string()))),
                None => (image_user, None),
            };
            UserSpec { field: "image.config.User", user: user.into(), group }
        }
    };
    if let Some((field, gid)) = &spec.group
        && gid.starts_with('-')
    {
        return Err(SpecError::Invalid { field: (*field).into(), reason: format!("{gid} is not a valid id") });
    }

    // The user: numeric (an entry in passwd gives it a name and a primary group) or a name.
    let (uid, entry) = if spec.user.is_empty() {
        (0, passwd.iter().find(|e| e.uid == 0))
    } else if let Ok(uid) = spec.user.parse::<u32>() {
        (uid, passwd.iter().find(|e| e.uid == uid))
    } else {
        let entry = passwd.iter().find(|e| e.name == spec.user).ok_or_else(|| SpecError::Invalid {
            field: spec.field.into(),
            reason: format!("user {:?} is not in the image's /etc/passwd", spec.user),
        })?;
        (entry.uid, Some(entry))
    };

    let gid = match &spec.group {
        None => entry.map_or(0, |e| e.gid),
        Some((field, name)) => match name.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups.iter().find(|g| &g.name == name).map(|g| g.gid).ok_or_else(|| SpecError::Invalid {
                field: (*field).into(),
                reason: format!("group {name:?} is not in the image's /etc/group"),
            })?,
        },
    };

    let policy = sc
        .map(|s| SupplementalGroupsPolicy::try_from(s.supplemental_groups_policy).unwrap_or_default())
        .unwrap_or_default();
    let mut supplemental = vec![gid];
    if policy == SupplementalGroupsPolicy::Merge
        && let Some(entry) = entry
    {
        // The groups that list the user as a member (not a group merely named after it).
        for group in groups.iter().filter(|g| g.name != entry.name && g.members.contains(&entry.name)) {
            if !supplemental.contains(&group.gid) {
                supplemental.push(group.gid);
            }
        }
    }
    for &requested in sc.map(|s| s.supplemental_groups.as_slice()).unwrap_or_default() {
        let requested = id("linux.security_context.supplemental_groups", requested)?;
        if !supplemental.contains(&requested) {
            supplemental.push(requested);
        }
    }
    Ok(ProcessUser { uid, gid, supplemental_groups: supplemental })
}
