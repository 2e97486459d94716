//! Which files may become documents, and reading one: manual pages under `man1` ... `man9`,
//! or the text files of a documentation tree; gzip or plain.

use super::{name_hash, roff_to_text, tidy, MAX_FILE_BYTES, MIN_DOC_BYTES};
use flate2::read::GzDecoder;
use std::collections::HashSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A file that may become a document.
pub(super) struct Candidate {
    pub(super) hash: u64,
    pub(super) name: String,
    pub(super) path: PathBuf,
}

/// The family of a document: the first word (up to `-`, `_`, `.`, `:`) of a man page's file
/// name, or the first directory of a documentation file.
pub(super) fn family(name: &str, man: bool) -> String {
    let s = if man {
        name.rsplit('/').next()
    } else {
        name.split('/').next()
    }
    .unwrap_or(name);
    let word = s.split(['-', '_', '.', ':']).next().unwrap_or(s);
    if word.is_empty() { s } else { word }.to_lowercase()
}

fn candidate(name: String, path: PathBuf) -> Candidate {
    Candidate {
        hash: name_hash(&name),
        name,
        path,
    }
}

/// The pages under `root/man1` ... `root/man9`; `None` when there is no such directory.
pub(super) fn man_candidates(root: &Path) -> Option<Vec<Candidate>> {
    let mut sections: Vec<String> = fs::read_dir(root)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|s| s.len() == 4 && s.starts_with("man") && matches!(s.as_bytes()[3], b'1'..=b'9'))
        .collect();
    if sections.is_empty() {
        return None;
    }
    sections.sort();
    let mut out = Vec::new();
    for sec in sections {
        let Ok(entries) = fs::read_dir(root.join(&sec)) else {
            continue;
        };
        for e in entries.flatten() {
            let (Ok(ft), Some(file)) = (e.file_type(), e.file_name().to_str().map(str::to_owned))
            else {
                continue;
            };
            let other_compression = [".bz2", ".xz", ".zst", ".lz", ".Z"]
                .iter()
                .any(|x| file.ends_with(x));
            if !ft.is_dir() && !other_compression {
                out.push(candidate(format!("{sec}/{file}"), e.path()));
            }
        }
    }
    Some(out)
}

/// `README*`, `*.txt`, `*.md` (plain or `.gz`) under `dir`, recursively, not following links
/// to directories.
pub(super) fn doc_candidates(root: &Path, dir: &Path, depth: usize, out: &mut Vec<Candidate>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        let path = e.path();
        if ft.is_dir() {
            if depth < 8 {
                doc_candidates(root, &path, depth + 1, out);
            }
            continue;
        }
        let file = e.file_name().to_string_lossy().to_lowercase();
        let base = file.strip_suffix(".gz").unwrap_or(&file);
        if base.starts_with("readme") || base.ends_with(".txt") || base.ends_with(".md") {
            if let Ok(rel) = path.strip_prefix(root) {
                out.push(candidate(
                    rel.to_string_lossy().replace('\\', "/"),
                    path.clone(),
                ));
            }
        }
    }
}

/// Whether the page's first non-comment line is a `.so` redirect.
pub(super) fn is_so_redirect(src: &str) -> bool {
    src.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with(".\\\"") && !l.starts_with("'\\\""))
        .is_some_and(|l| l.starts_with(".so ") || l.starts_with(".so\t"))
}

/// Reads, decompresses and extracts one candidate; `None` when it is to be skipped.
pub(super) fn load(
    c: &Candidate,
    man: bool,
    seen: &mut HashSet<PathBuf>,
    seen_text: &mut HashSet<u64>,
) -> Option<String> {
    if !seen.insert(fs::canonicalize(&c.path).ok()?) {
        return None;
    }
    let file = fs::File::open(&c.path).ok()?;
    let mut bytes = Vec::new();
    if c.name.ends_with(".gz") {
        GzDecoder::new(file)
            .take(MAX_FILE_BYTES)
            .read_to_end(&mut bytes)
            .ok()?;
    } else {
        file.take(MAX_FILE_BYTES).read_to_end(&mut bytes).ok()?;
    }
    let src = String::from_utf8_lossy(&bytes);
    let bad = src
        .chars()
        .filter(|&ch| ch == char::REPLACEMENT_CHARACTER)
        .count();
    if bad * 100 > src.chars().count() || (man && is_so_redirect(&src)) {
        return None;
    }
    let text = if man {
        roff_to_text(&src)
    } else {
        tidy(src.lines())
    };
    (text.len() >= MIN_DOC_BYTES && seen_text.insert(name_hash(&text))).then_some(text)
}
