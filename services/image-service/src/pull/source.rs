//! The `containerd.io/distribution.source.<registry host>` label a pull puts on every blob it
//! stores or finds: the repositories of that registry the blob is known to come from, sorted,
//! without duplicates and joined by commas, as containerd's pull appends them. Another
//! repository's pull of the same blob adds its own name and keeps the others.

use crisp_containerd::labels::DISTRIBUTION_SOURCE_PREFIX;
use std::collections::HashMap;

/// `existing` (a label's value, empty or absent for none) with `repository` added.
pub fn append_repository(existing: Option<&str>, repository: &str) -> String {
    let mut repositories: Vec<&str> = existing.unwrap_or_default().split(',').filter(|r| !r.is_empty()).collect();
    repositories.push(repository);
    repositories.sort_unstable();
    repositories.dedup();
    repositories.join(",")
}

/// `wanted` with each distribution source label's repository appended to what the blob's
/// labels (`existing`) hold already; other labels as they are in `wanted`.
pub fn merged(existing: &HashMap<String, String>, mut wanted: HashMap<String, String>) -> HashMap<String, String> {
    for (key, value) in wanted.iter_mut() {
        if key.starts_with(DISTRIBUTION_SOURCE_PREFIX) {
            *value = append_repository(existing.get(key).map(String::as_str), value);
        }
    }
    wanted
}

/// The labels of `wanted` whose value `existing` lacks (a source repository counts as there
/// when the label lists it): the update a blob needs, empty when it has them all.
pub fn missing(existing: &HashMap<String, String>, wanted: &HashMap<String, String>) -> HashMap<String, String> {
    merged(existing, wanted.clone()).into_iter().filter(|(key, value)| existing.get(key) != Some(value)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_are_appended_sorted_once_each() {
        assert_eq!(append_repository(None, "library/busybox"), "library/busybox");
        assert_eq!(append_repository(Some(""), "library/busybox"), "library/busybox");
        assert_eq!(append_repository(Some("library/busybox"), "library/busybox"), "library/busybox");
        assert_eq!(append_repository(Some("z/b,a/b"), "m/n"), "a/b,m/n,z/b");
        assert_eq!(append_repository(Some("a,,c"), "b"), "a,b,c");
    }

    #[test]
    fn only_source_labels_merge_and_only_changes_are_missing() {
        let key = format!("{DISTRIBUTION_SOURCE_PREFIX}registry.example");
        let existing = HashMap::from([
            (key.clone(), "team/app".to_string()),
            ("containerd.io/gc.ref.content.config".to_string(), "sha256:old".to_string()),
        ]);
        let wanted = HashMap::from([
            (key.clone(), "team/base".to_string()),
            ("containerd.io/gc.ref.content.config".to_string(), "sha256:new".to_string()),
        ]);
        let merged = merged(&existing, wanted.clone());
        assert_eq!(merged[&key], "team/app,team/base");
        assert_eq!(merged["containerd.io/gc.ref.content.config"], "sha256:new");
        assert_eq!(missing(&existing, &wanted).len(), 2);
        assert!(missing(&merged, &wanted).is_empty());
        let only_source = HashMap::from([(key.clone(), "team/app".to_string())]);
        assert!(missing(&existing, &only_source).is_empty());
    }
}
