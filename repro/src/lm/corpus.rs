//! A deterministic natural-language corpus for the byte-level language model, extracted from the
//! manual pages of this machine (no download), with a fixed held-out validation split.
//!
//! Candidate documents are the files under `<root>/man1` ... `<root>/man9` (the English pages;
//! translated trees such as `<root>/de/` are not read). A root without such directories is read
//! as a documentation tree instead: every `README*`, `*.txt` and `*.md` file under it (plain or
//! `.gz`); changelogs and copyright files are left out as boilerplate. Documents are named by
//! their path relative to the root and taken in the order of the FNV-1a hash of that name, so
//! the corpus depends only on which pages exist. A document is held out for validation when a
//! second, salted hash of its name falls under `val_fraction`.
//!
//! One family of pages (the first word of the page name, e.g. `gcloud` in
//! `man1/gcloud_compute_ssh.1.gz`; in a documentation tree, the package directory) contributes
//! at most `target_bytes / 20` (plus the page that crosses it): on this machine 16,631 of the
//! 19,746 pages are generated `gcloud` command references, which would otherwise make two
//! thirds of the text the same boilerplate.

use crate::error::{io_err, ReproError, Result};
use std::collections::{HashMap, HashSet};

mod roff;
mod sources;
pub use roff::roff_to_text;
use sources::{doc_candidates, family, load, man_candidates};
use std::fs;
use std::path::{Path, PathBuf};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
/// Below this many bytes a corpus of `target_bytes >= FLOOR_BYTES` is refused.
const FLOOR_BYTES: usize = 5_000_000;
/// Pages with less extracted text than this are skipped.
const MIN_DOC_BYTES: usize = 200;
/// The most bytes read from one (decompressed) file.
const MAX_FILE_BYTES: u64 = 16 << 20;
const VAL_SALT: &[u8] = b"simbal-lm-val\0";
/// One family of pages gives at most `target_bytes / FAMILY_SHARE` bytes.
const FAMILY_SHARE: usize = 20;

/// Where the text comes from and how much.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CorpusConfig {
    /// Roots read in order; a later root is read only while the earlier ones gave less than
    /// `min(target_bytes, 5 MB)`. Default: `/usr/share/man` (English sections), then
    /// `/usr/share/doc` as the fallback.
    pub roots: Vec<PathBuf>,
    /// Bytes of extracted text to collect (train + val); the document that crosses it is the last.
    pub target_bytes: usize,
    /// Fraction of the documents held out for validation, in `[0, 1)`.
    pub val_fraction: f64,
}

impl Default for CorpusConfig {
    fn default() -> Self {
        Self {
            roots: vec![
                PathBuf::from("/usr/share/man"),
                PathBuf::from("/usr/share/doc"),
            ],
            target_bytes: 6 * 1024 * 1024,
            val_fraction: 0.05,
        }
    }
}

/// The corpus: training and validation bytes and where they came from.
#[derive(Debug, Clone)]
pub struct Corpus {
    source: String,
    train: Vec<u8>,
    val: Vec<u8>,
    train_docs: usize,
    val_docs: usize,
}

/// FNV-1a 64 continued from `state` over `bytes`.
fn fnv1a(state: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(state, |h, &b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
}

fn name_hash(name: &str) -> u64 {
    fnv1a(FNV_OFFSET, name.as_bytes())
}

fn is_val(name: &str, val_fraction: f64) -> bool {
    let h = fnv1a(fnv1a(FNV_OFFSET, VAL_SALT), name.as_bytes());
    h % 10_000 < (val_fraction * 10_000.0).round() as u64
}

fn check(cfg: &CorpusConfig) -> Result<()> {
    if !(0.0..1.0).contains(&cfg.val_fraction) {
        return Err(ReproError::Config(format!(
            "corpus val_fraction must lie in [0, 1), got {}",
            cfg.val_fraction
        )));
    }
    if cfg.target_bytes == 0 {
        return Err(ReproError::Config(
            "corpus target_bytes must be positive".into(),
        ));
    }
    Ok(())
}

/// Documents taken in selection order until the target is reached.
struct Selection {
    target: usize,
    val_fraction: f64,
    docs: Vec<(Vec<u8>, bool)>,
    total: usize,
}

impl Selection {
    fn new(cfg: &CorpusConfig) -> Self {
        Self {
            target: cfg.target_bytes,
            val_fraction: cfg.val_fraction,
            docs: Vec::new(),
            total: 0,
        }
    }

    /// Adds a document; true once the target is reached.
    fn push(&mut self, name: &str, mut text: Vec<u8>) -> bool {
        if !text.is_empty() {
            if !text.ends_with(b"\n") {
                text.push(b'\n');
            }
            self.total += text.len();
            self.docs.push((text, is_val(name, self.val_fraction)));
        }
        self.total >= self.target
    }

    fn finish(mut self, source: String) -> Result<Corpus> {
        if self.docs.len() < 2 {
            return Err(ReproError::Config(format!(
                "{source}: {} usable document(s) with {} bytes of text, need at least 2 \
                 (train and validation); pass a text file with --corpus FILE",
                self.docs.len(),
                self.total
            )));
        }
        if !self.docs.iter().any(|d| d.1) {
            if let Some(first) = self.docs.first_mut() {
                first.1 = true;
            }
        } else if self.docs.iter().all(|d| d.1) {
            if let Some(first) = self.docs.first_mut() {
                first.1 = false;
            }
        }
        let (mut train, mut val) = (Vec::new(), Vec::new());
        let (mut train_docs, mut val_docs) = (0, 0);
        for (text, held_out) in self.docs {
            let (buf, n) = if held_out {
                (&mut val, &mut val_docs)
            } else {
                (&mut train, &mut train_docs)
            };
            if !buf.is_empty() {
                buf.push(b'\n');
            }
            buf.extend_from_slice(&text);
            *n += 1;
        }
        Ok(Corpus {
            source,
            train,
            val,
            train_docs,
            val_docs,
        })
    }
}

/// Collapses blank-line runs, trims line ends, drops control characters but tabs; ends with a
/// newline unless empty.
fn tidy<'a>(lines: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::new();
    let mut blank = true;
    for line in lines {
        let line: String = line
            .chars()
            .filter(|c| !c.is_control() || *c == '\t')
            .collect();
        let line = line.trim_end();
        if line.is_empty() {
            if !blank {
                out.push('\n');
            }
            blank = true;
        } else {
            out.push_str(line);
            out.push('\n');
            blank = false;
        }
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

impl Corpus {
    /// Builds the corpus from the system's manual pages (and the fallback roots of `cfg`, only
    /// while the earlier roots give less than `min(target_bytes, 5 MB)`), decompressing lazily
    /// in hash order until `target_bytes` of text is collected, each family of pages capped at
    /// `target_bytes / 20` (see the module docs). Roots that do not exist, `.so` redirects,
    /// links to pages already read, duplicate texts, unreadable, invalid or non-UTF-8 files and
    /// pages under 200 bytes of text are skipped.
    ///
    /// # Errors
    /// [`ReproError::Config`] when `cfg` is invalid, when `target_bytes >= 5_000_000` but all
    /// roots together give less than 5 MB, or when fewer than two documents are found.
    pub fn from_system_docs(cfg: &CorpusConfig) -> Result<Corpus> {
        check(cfg)?;
        let mut sel = Selection::new(cfg);
        let (mut seen, mut seen_text) = (HashSet::new(), HashSet::new());
        let mut used = Vec::new();
        let cap = (cfg.target_bytes / FAMILY_SHARE).max(MIN_DOC_BYTES);
        let mut families: HashMap<String, usize> = HashMap::new();
        for (i, root) in cfg.roots.iter().enumerate() {
            if i > 0 && sel.total >= cfg.target_bytes.min(FLOOR_BYTES) {
                break;
            }
            let (mut cands, man) = match man_candidates(root) {
                Some(c) => (c, true),
                None => {
                    let mut c = Vec::new();
                    doc_candidates(root, root, 0, &mut c);
                    (c, false)
                }
            };
            if cands.is_empty() {
                continue;
            }
            cands.sort_by(|a, b| (a.hash, &a.name).cmp(&(b.hash, &b.name)));
            used.push(root.display().to_string());
            for c in &cands {
                let fam = families.entry(family(&c.name, man)).or_default();
                if *fam >= cap {
                    continue;
                }
                if let Some(text) = load(c, man, &mut seen, &mut seen_text) {
                    *fam += text.len();
                    if sel.push(&c.name, text.into_bytes()) {
                        break;
                    }
                }
            }
        }
        let roots: Vec<String> = cfg.roots.iter().map(|r| r.display().to_string()).collect();
        if cfg.target_bytes >= FLOOR_BYTES && sel.total < FLOOR_BYTES {
            return Err(ReproError::Config(format!(
                "only {} bytes of text found under {}, need {FLOOR_BYTES}; pass a text file with \
                 --corpus FILE",
                sel.total,
                roots.join(", ")
            )));
        }
        let used = if used.is_empty() {
            roots.join(", ")
        } else {
            used.join(" + ")
        };
        sel.finish(format!("system docs {used}"))
    }

    /// Reads a plain text file; the last `val_fraction` of its bytes (at least one line) is held
    /// out, cut just after a newline when there is one. Counts as one document on each side.
    ///
    /// # Errors
    /// [`ReproError::Io`] when the file cannot be read, [`ReproError::Config`] when
    /// `val_fraction` is outside `[0, 1)` or the file is too small to give both splits.
    pub fn from_file(path: &Path, val_fraction: f64) -> Result<Corpus> {
        check(&CorpusConfig {
            roots: Vec::new(),
            target_bytes: 1,
            val_fraction,
        })?;
        let bytes = fs::read(path).map_err(io_err(path))?;
        let n = bytes.len();
        let want = n - ((n as f64 * val_fraction).round() as usize).clamp(1, n.max(1));
        // Last newline before the wanted cut, else the first after it, else the cut itself.
        let cut = match bytes[..want].iter().rposition(|&b| b == b'\n') {
            Some(p) => p + 1,
            None => bytes[want..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(want, |p| want + p + 1),
        };
        if cut == 0 || cut >= n {
            return Err(ReproError::Config(format!(
                "{}: {n} bytes cannot be split into train and validation text",
                path.display()
            )));
        }
        Ok(Corpus {
            source: format!("file {}", path.display()),
            val: bytes[cut..].to_vec(),
            train: bytes[..cut].to_vec(),
            train_docs: 1,
            val_docs: 1,
        })
    }

    /// Builds the corpus from `(name, text)` documents (already plain text; empty ones are
    /// ignored): ordered by the FNV-1a hash of the name (ties by name), taken until
    /// `target_bytes` is reached, split by the salted name hash, joined with a blank line.
    /// `cfg.roots` is not used.
    ///
    /// ```
    /// use simbal_repro::lm::corpus::{Corpus, CorpusConfig};
    /// let docs: Vec<(String, Vec<u8>)> = (0..40)
    ///     .map(|i| (format!("man1/page{i}.1"), format!("page {i} says hello\n").into_bytes()))
    ///     .collect();
    /// let cfg = CorpusConfig { target_bytes: 10_000, val_fraction: 0.1, ..CorpusConfig::default() };
    /// let c = Corpus::from_texts(docs.clone(), &cfg)?;
    /// let (train, val) = c.documents();
    /// assert_eq!(train + val, 40);
    /// assert!(val >= 1 && !c.val().is_empty());
    /// // The same documents in another order give the same corpus.
    /// let mut shuffled = docs;
    /// shuffled.reverse();
    /// assert_eq!(Corpus::from_texts(shuffled, &cfg)?.fingerprint(), c.fingerprint());
    /// # Ok::<(), simbal_repro::ReproError>(())
    /// ```
    ///
    /// # Errors
    /// [`ReproError::Config`] when `cfg` is invalid or fewer than two non-empty documents are
    /// given.
    pub fn from_texts(mut docs: Vec<(String, Vec<u8>)>, cfg: &CorpusConfig) -> Result<Corpus> {
        check(cfg)?;
        let count = docs.len();
        docs.sort_by_cached_key(|(name, _)| (name_hash(name), name.clone()));
        let mut sel = Selection::new(cfg);
        for (name, text) in docs {
            if sel.push(&name, text) {
                break;
            }
        }
        sel.finish(format!("{count} given texts"))
    }

    /// The training bytes.
    pub fn train(&self) -> &[u8] {
        &self.train
    }

    /// The held-out validation bytes.
    pub fn val(&self) -> &[u8] {
        &self.val
    }

    /// (training documents, validation documents).
    pub fn documents(&self) -> (usize, usize) {
        (self.train_docs, self.val_docs)
    }

    /// FNV-1a 64 over the training bytes, then the validation bytes.
    pub fn fingerprint(&self) -> u64 {
        fnv1a(fnv1a(FNV_OFFSET, &self.train), &self.val)
    }

    /// One line: source, bytes train/val, documents, fingerprint in hex.
    pub fn describe(&self) -> String {
        format!(
            "corpus {}: train {} bytes / val {} bytes, {} / {} documents, fingerprint {:016x}",
            self.source,
            self.train.len(),
            self.val.len(),
            self.train_docs,
            self.val_docs,
            self.fingerprint()
        )
    }
}

#[cfg(test)]
#[path = "corpus_tests.rs"]
mod tests;
