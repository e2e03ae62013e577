//! `--shard I/N`: which share of every split one worker extracts, and finding a split whose
//! shards were extracted by many workers.
//!
//! **The rule.** A split's rows (after `--sample`/`--limit`, in the data's order) are cut into
//! units: for CIFAR-10 and folders, backbone batches of `--extract-batch-size` rows; for
//! WebDataset, tar files (whole tar files are the unit); for a Hub data set, parquet row groups. With `U` units, shard `i` of `n` gets
//! units `[i·U/n, (i+1)·U/n)` (integer division): contiguous rows, so the shards joined in
//! index order are the split in its order, and each shard's batches are exactly the batches
//! an unsharded run makes (for WebDataset, batch boundaries fall where tar files end; the
//! backbone's per-row results do not depend on where a row sits in its batch, which the tests
//! check). A split with fewer units than shards is refused.

use crate::cache::shards::{merge_shards, shard_dirs, ShardProblem};
use crate::cache::{CachedFeatures, EntryLock, FeatureCache, FeatureKey, ShardOf};
use crate::data::sample::Subset;
use crate::data::DataSpec;
use crate::error::{Error, Result};

use super::{FeatureRequest, Session};

/// One worker's share: shard `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSpec {
    /// `0..count`.
    pub index: usize,
    /// Number of workers.
    pub count: usize,
}

impl ShardSpec {
    /// Parses `--shard`: `I/N`, `auto`, or `auto/N`. `auto` reads the scheduler's variables
    /// through `var`: Slurm's `SLURM_ARRAY_TASK_ID` with `SLURM_ARRAY_TASK_COUNT` (or
    /// `SLURM_ARRAY_TASK_MIN`/`MAX`), else Kubernetes' `JOB_COMPLETION_INDEX` with the count
    /// from `auto/N` or `LASTLAYER_SHARDS`.
    pub fn parse(value: &str, var: impl Fn(&str) -> Option<String>) -> Result<ShardSpec> {
        let bad = |m: String| Error::usage("--shard", m);
        let num = |name: &str, v: &str| v.trim().parse::<usize>().map_err(|_| bad(format!("{name}='{v}' is not a whole number")));
        let (head, count) = match value.split_once('/') {
            Some((h, n)) => (h, Some(n.parse::<usize>().map_err(|_| bad(format!("'{value}': the count after '/' must be a whole number")))?)),
            None => (value, None),
        };
        let spec = if head == "auto" {
            if let Some(id) = var("SLURM_ARRAY_TASK_ID") {
                let id = num("SLURM_ARRAY_TASK_ID", &id)?;
                let min = var("SLURM_ARRAY_TASK_MIN").map(|v| num("SLURM_ARRAY_TASK_MIN", &v)).transpose()?.unwrap_or(0);
                let n = match (count, var("SLURM_ARRAY_TASK_COUNT"), var("SLURM_ARRAY_TASK_MAX")) {
                    (Some(n), _, _) => n,
                    (None, Some(c), _) => num("SLURM_ARRAY_TASK_COUNT", &c)?,
                    (None, None, Some(max)) => num("SLURM_ARRAY_TASK_MAX", &max)? + 1 - min,
                    (None, None, None) => return Err(bad("SLURM_ARRAY_TASK_ID is set but not SLURM_ARRAY_TASK_COUNT nor MAX; give --shard auto/N".into())),
                };
                ShardSpec { index: id.checked_sub(min).ok_or_else(|| bad(format!("SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}")))?, count: n }
            } else if let Some(id) = var("JOB_COMPLETION_INDEX") {
                let n = match (count, var("LASTLAYER_SHARDS")) {
                    (Some(n), _) => n,
                    (None, Some(c)) => num("LASTLAYER_SHARDS", &c)?,
                    (None, None) => {
                        return Err(bad(
                            "JOB_COMPLETION_INDEX is set but not the number of shards: give --shard auto/N or set LASTLAYER_SHARDS \
                             to the Job's completions"
                                .into(),
                        ))
                    }
                };
                ShardSpec { index: num("JOB_COMPLETION_INDEX", &id)?, count: n }
            } else {
                return Err(bad(
                    "`auto` found neither SLURM_ARRAY_TASK_ID (a Slurm array job) nor JOB_COMPLETION_INDEX (a Kubernetes \
                     Indexed Job); give I/N instead"
                        .into(),
                ));
            }
        } else {
            let index = head.parse::<usize>().map_err(|_| bad(format!("'{value}' is not I/N (e.g. 0/4), `auto` or `auto/N`")))?;
            ShardSpec { index, count: count.ok_or_else(|| bad(format!("'{value}' lacks the count: give I/N, e.g. {index}/4")))? }
        };
        if spec.count == 0 || spec.index >= spec.count {
            return Err(bad(format!("shard {}/{}: the index must be below the count (0/{n} .. {}/{n})", spec.index, spec.count, spec.count.saturating_sub(1), n = spec.count)));
        }
        Ok(spec)
    }

    /// This shard's rows, by [the rule](self), given the split's unit boundaries `bounds`
    /// (`0 = b₀ < b₁ < … < b_U = rows`). `batch_size` is recorded with it.
    pub fn rows(&self, split: &str, bounds: &[usize], unit: &str, batch_size: usize) -> Result<ShardOf> {
        let units = bounds.len().saturating_sub(1);
        if units < self.count {
            return Err(Error::usage(
                "--shard",
                format!("the {split} split has {units} {unit}(s), fewer than {} shards; use at most {units} shards", self.count),
            ));
        }
        let (a, b) = (self.index * units / self.count, (self.index + 1) * units / self.count);
        Ok(ShardOf { index: self.index, count: self.count, start: bounds[a], end: bounds[b], batch_size })
    }
}

/// The whole split's entry for `key`: from the cache, or merged from a complete set of shard
/// entries (which are then deleted). `Ok(None)` when there is neither; an error naming every
/// missing or damaged shard, with the command that makes it, when only some shards are there.
pub(super) fn find_or_merge(session: &Session, req: &FeatureRequest, cache: &FeatureCache, key: &FeatureKey) -> Result<Option<(CachedFeatures, bool)>> {
    if let Some(hit) = cache.lookup(key)? {
        return Ok(Some((hit, false)));
    }
    if shard_dirs(cache, key)?.is_empty() {
        return Ok(None);
    }
    let _lock = EntryLock::acquire(&cache.lock_path(key))?;
    if let Some(hit) = cache.lookup(key)? {
        return Ok(Some((hit, false)));
    }
    match merge_shards(cache, key)? {
        None => Ok(None),
        Some(Ok(merged)) => Ok(Some((merged, true))),
        Some(Err(problems)) => Err(shard_error(session, req, key, &problems)),
    }
}

fn shard_error(session: &Session, req: &FeatureRequest, key: &FeatureKey, problems: &[ShardProblem]) -> Error {
    let first = &problems[0];
    let others: Vec<String> = problems[1..].iter().map(|p| format!("{}/{} ({})", p.index, p.count, p.reason)).collect();
    let command = extract_command(session, req, &key.split, &format!("{}/{}", first.index, first.count));
    Error::Shard {
        split: key.split.clone(),
        shard: format!("{}/{}", first.index, first.count),
        dir: first.dir.clone(),
        reason: format!(
            "{} ({}){}",
            first.reason,
            first.dir.display(),
            if others.is_empty() { String::new() } else { format!("; also shard {}", others.join(", ")) }
        ),
        command,
    }
}

/// The `lastlayer extract` command line that makes shard `shard` of `split` for `req`.
pub fn extract_command(session: &Session, req: &FeatureRequest, split: &str, shard: &str) -> String {
    let mut a: Vec<String> = vec!["lastlayer".into(), "--cache-dir".into(), quote(&session.cache_dir.display().to_string()), "extract".into()];
    let mut push = |k: &str, v: String| {
        a.push(k.into());
        a.push(v);
    };
    push("--model", req.model.clone());
    match &req.data {
        DataSpec::Cifar10 { data_dir } => {
            push("--data", "cifar10".into());
            if let Some(d) = data_dir {
                push("--data-dir", quote(&d.display().to_string()));
            }
        }
        DataSpec::Folder { root, test_fraction, strict, labels, label_column } => {
            push("--data", quote(&root.display().to_string()));
            push("--test-fraction", test_fraction.to_string());
            if let Some(l) = labels {
                push("--labels", quote(&l.display().to_string()));
            }
            if let Some(c) = label_column {
                push("--label-column", quote(c));
            }
            if *strict {
                a.push("--strict".into());
            }
        }
        DataSpec::HuggingFace { request, image_column, label_column } => {
            let mut v = format!("hf:{}", request.repo);
            if let Some(r) = &request.revision {
                v.push_str(&format!("@{r}"));
            }
            if let Some(c) = &request.config {
                v.push_str(&format!(":{c}"));
            }
            push("--data", quote(&v));
            if let Some(c) = image_column {
                push("--image-column", quote(c));
            }
            if let Some(c) = label_column {
                push("--label-column", quote(c));
            }
        }
        DataSpec::WebDataset { train, test, strict, .. } => {
            push("--data", quote(train));
            if let Some(t) = test {
                push("--test-data", quote(t));
            }
            if *strict {
                a.push("--strict".into());
            }
        }
    }
    let mut push = |k: &str, v: String| {
        a.push(k.into());
        a.push(v);
    };
    match req.subset {
        Subset::All => {}
        Subset::Fraction(f) => push("--sample", f.to_string()),
        Subset::Limit(n) => push("--limit", n.to_string()),
    }
    if req.sample_seed != 0 {
        push("--sample-seed", req.sample_seed.to_string());
    }
    if let crate::backbone::PrecisionChoice::Fixed(p) = req.precision {
        push("--precision", if p == crate::backbone::Precision::Bf16 { "bf16".into() } else { "fp32".into() });
    }
    if let Some(w) = &req.weights {
        push("--weights", quote(&w.display().to_string()));
    }
    if let Some(s) = req.input_size {
        push("--input-size", s.to_string());
    }
    if let Some(b) = req.batch_size {
        push("--extract-batch-size", b.to_string());
    }
    if let (Some(a), "train") = (req.augment, split) {
        push("--augment", a.to_string());
    }
    if req.tta == crate::data::views::Tta::Flip && split == "test" {
        push("--tta", "flip".into());
    }
    push("--split", split.into());
    push("--shard", shard.into());
    a.join(" ")
}

/// `s` quoted for a POSIX shell when it needs to be.
fn quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn explicit_and_scheduler_shards_parse() {
        assert_eq!(ShardSpec::parse("2/5", env(&[])).unwrap(), ShardSpec { index: 2, count: 5 });
        let slurm = [("SLURM_ARRAY_TASK_ID", "3"), ("SLURM_ARRAY_TASK_COUNT", "4")];
        assert_eq!(ShardSpec::parse("auto", env(&slurm)).unwrap(), ShardSpec { index: 3, count: 4 });
        let minmax = [("SLURM_ARRAY_TASK_ID", "11"), ("SLURM_ARRAY_TASK_MIN", "10"), ("SLURM_ARRAY_TASK_MAX", "12")];
        assert_eq!(ShardSpec::parse("auto", env(&minmax)).unwrap(), ShardSpec { index: 1, count: 3 });
        let k8s = [("JOB_COMPLETION_INDEX", "1"), ("LASTLAYER_SHARDS", "2")];
        assert_eq!(ShardSpec::parse("auto", env(&k8s)).unwrap(), ShardSpec { index: 1, count: 2 });
        assert_eq!(ShardSpec::parse("auto/6", env(&[("JOB_COMPLETION_INDEX", "5")])).unwrap(), ShardSpec { index: 5, count: 6 });
    }

    #[test]
    fn bad_shards_name_the_flag_and_the_fix() {
        for (v, e, needle) in [
            ("3/3", &[][..], "below the count"),
            ("1", &[][..], "lacks the count"),
            ("x/2", &[][..], "is not I/N"),
            ("auto", &[][..], "SLURM_ARRAY_TASK_ID"),
            ("auto", &[("JOB_COMPLETION_INDEX", "0")][..], "LASTLAYER_SHARDS"),
            ("auto", &[("SLURM_ARRAY_TASK_ID", "x"), ("SLURM_ARRAY_TASK_COUNT", "2")][..], "not a whole number"),
        ] {
            let err = ShardSpec::parse(v, env(e)).unwrap_err().to_string();
            assert!(err.contains("--shard") && err.contains(needle), "{v}: {err}");
        }
    }

    #[test]
    fn shards_tile_the_units_in_order() {
        // 10 batches of 4 rows, the last short: 38 rows.
        let bounds: Vec<usize> = (0..10).map(|u| u * 4).chain([38]).collect();
        let parts: Vec<ShardOf> = (0..3).map(|i| ShardSpec { index: i, count: 3 }.rows("train", &bounds, "batch", 4).unwrap()).collect();
        assert_eq!(parts.iter().map(|s| (s.start, s.end)).collect::<Vec<_>>(), vec![(0, 12), (12, 24), (24, 38)]);
        let err = ShardSpec { index: 0, count: 11 }.rows("train", &bounds, "batch", 4).unwrap_err().to_string();
        assert!(err.contains("10 batch(s)") && err.contains("at most 10"), "{err}");
    }
}
