//! Roff (`man` and `mdoc` page source) to plain text.

use super::tidy;
use std::collections::HashMap;

mod escapes;
mod mdoc;

use mdoc::MDOC;

/// Roff (man page source, `man` or `mdoc` macros) to plain text: requests and layout macros
/// dropped, the text of font, heading and mdoc macros kept, escapes resolved to plain
/// characters, source line breaks kept, blank-line runs collapsed. Macro definitions,
/// conditionals (with their `\{ ... \}` blocks), `eqn` and `pic` blocks are dropped; table cells
/// are kept, separated by a space. The result ends with a newline unless it is empty.
///
/// ```
/// use simbal_repro::lm::corpus::roff_to_text;
/// let page = ".\\\" a comment\n.SH NAME\nls \\- list directory contents\n.PP\nSee\n.BR dir (1).\n";
/// let text = roff_to_text(page);
/// assert!(text.contains("NAME") && text.contains("ls - list directory contents"));
/// assert!(text.contains("dir(1).") && !text.contains("comment"));
/// ```
pub fn roff_to_text(src: &str) -> String {
    let mut r = Roff::default();
    let mut logical = String::new();
    for line in src.lines() {
        let trailing = line.len() - line.trim_end_matches('\\').len();
        if trailing % 2 == 1 {
            logical.push_str(&line[..line.len() - 1]);
            continue;
        }
        logical.push_str(line);
        r.line(&logical);
        logical.clear();
    }
    if !logical.is_empty() {
        r.line(&logical);
    }
    tidy(r.lines.iter().map(String::as_str))
}

#[derive(Default)]
struct Roff {
    lines: Vec<String>,
    /// Separator with which the next output joins the last line (`\c`, `.IP` tags, `.SY`).
    join: Option<&'static str>,
    /// Set by `\c` while unescaping.
    cont: bool,
    /// No-fill mode (`.nf`, `.EX`, `.Vb`, `.Bd -literal`): source lines stay lines.
    nofill: bool,
    /// Whether the next filled text continues the last line.
    open: bool,
    /// Whether the next output line is closed once written (headings, tags, table rows).
    break_after: bool,
    /// Depth of a skipped conditional block.
    braces: usize,
    /// End line of a skipped macro definition or eqn/pic block.
    skip_until: Option<String>,
    /// Table state: the cell separator, and whether format lines are being read.
    table: Option<(char, bool)>,
    strings: HashMap<String, String>,
    mdoc_name: Option<String>,
}

/// Splits macro arguments: quoted (`""` inside is a quote) or up to unescaped whitespace.
/// Returns each argument and whether it was quoted; stops at a `\"` comment.
fn split_args(s: &str) -> Vec<(String, bool)> {
    let cs: Vec<char> = s.chars().collect();
    let (mut out, mut i) = (Vec::new(), 0);
    while i < cs.len() {
        if cs[i] == ' ' || cs[i] == '\t' {
            i += 1;
            continue;
        }
        let quoted = cs[i] == '"';
        let mut arg = String::new();
        i += usize::from(quoted);
        while i < cs.len() {
            let c = cs[i];
            if c == '\\' && matches!(cs.get(i + 1), Some('"' | '#')) {
                i = cs.len();
                break;
            }
            if c == '\\' {
                arg.push(c);
                if let Some(&n) = cs.get(i + 1) {
                    arg.push(n);
                }
                i += 2;
                continue;
            }
            if quoted && c == '"' {
                if cs.get(i + 1) == Some(&'"') {
                    arg.push('"');
                    i += 2;
                    continue;
                }
                i += 1;
                break;
            }
            if !quoted && (c == ' ' || c == '\t') {
                break;
            }
            arg.push(c);
            i += 1;
        }
        out.push((arg, quoted));
    }
    out
}

impl Roff {
    fn line(&mut self, line: &str) {
        if self.braces > 0 {
            let (open, close) = (line.matches("\\{").count(), line.matches("\\}").count());
            self.braces = (self.braces + open).saturating_sub(close);
            return;
        }
        if let Some(end) = &self.skip_until {
            if line.trim_end() == end || line.starts_with(&format!("{end} ")) {
                self.skip_until = None;
            }
            return;
        }
        let control = line.starts_with('.') || line.starts_with('\'');
        match self.table {
            Some((_, true)) if !control => {
                if line.trim_end().ends_with('.') {
                    self.table = self.table.map(|(t, _)| (t, false));
                } else if let Some(p) = line.find("tab(") {
                    let tab = line[p + 4..].chars().next().unwrap_or('\t');
                    self.table = Some((tab, true));
                }
            }
            Some((tab, false)) if !control => {
                let t = line.trim();
                if t != "_" && t != "=" {
                    let t = t.strip_prefix("T}").unwrap_or(t);
                    let t = t.strip_suffix("T{").unwrap_or(t);
                    let cells: Vec<String> =
                        t.split(tab).map(|c| self.unescape(c.trim(), 0)).collect();
                    let row = cells
                        .iter()
                        .map(|c| c.trim())
                        .filter(|c| !c.is_empty())
                        .collect::<Vec<_>>();
                    if !row.is_empty() {
                        self.break_after = true;
                        self.emit(row.join(" "));
                    }
                }
            }
            _ if control => self.request(&line[1..]),
            _ if line.trim().is_empty() => self.blank(),
            _ => {
                let t = self.unescape(line, 0);
                if !t.trim().is_empty() {
                    self.emit(t);
                }
            }
        }
    }

    fn brk(&mut self) {
        self.open = false;
        self.join = None;
    }

    fn blank(&mut self) {
        self.brk();
        if self.lines.last().is_some_and(|l| !l.trim().is_empty()) {
            self.lines.push(String::new());
        }
    }

    fn emit(&mut self, text: String) {
        let fill = !self.nofill && self.open && !text.starts_with([' ', '\t']);
        let sep = self.join.take().or(if fill { Some(" ") } else { None });
        match (sep, self.lines.last_mut()) {
            (Some(sep), Some(last)) if !last.trim().is_empty() => {
                if !sep.is_empty() {
                    last.truncate(last.trim_end().len());
                }
                last.push_str(sep);
                last.push_str(&text);
            }
            _ => self.lines.push(text),
        }
        self.open = !self.nofill && !std::mem::take(&mut self.break_after);
        if std::mem::take(&mut self.cont) {
            self.join = Some("");
        }
    }

    fn args(&mut self, rest: &str, sep: &str) -> String {
        let words: Vec<String> = split_args(rest)
            .iter()
            .map(|(a, _)| self.unescape(a, 0))
            .collect();
        words.join(sep)
    }

    fn request(&mut self, body: &str) {
        let body = body.trim_start_matches([' ', '\t']);
        if body.is_empty()
            || body.starts_with("\\\"")
            || body.starts_with("\\#")
            || body.starts_with("\\}")
        {
            return;
        }
        let end = body.find([' ', '\t', '\\']).unwrap_or(body.len());
        let (name, rest) = (&body[..end], body[end..].trim_start());
        let first = || {
            split_args(rest)
                .into_iter()
                .next()
                .map(|a| a.0)
                .unwrap_or_default()
        };
        match name {
            "ie" | "if" | "el" | "while" => {
                self.braces = rest
                    .matches("\\{")
                    .count()
                    .saturating_sub(rest.matches("\\}").count());
            }
            "ig" => {
                self.skip_until = Some(format!(
                    ".{}",
                    if rest.is_empty() { ".".into() } else { first() }
                ))
            }
            "de" | "de1" | "dei" | "am" | "am1" | "ami" => {
                let end = split_args(rest)
                    .get(1)
                    .map_or_else(|| ".".into(), |a| a.0.clone());
                self.skip_until = Some(format!(".{end}"));
            }
            "EQ" => self.skip_until = Some(".EN".into()),
            "PS" => self.skip_until = Some(".PE".into()),
            "ds" | "ds1" => {
                let n = rest.find([' ', '\t']).unwrap_or(rest.len());
                let value = rest[n..].trim_start();
                let value = value.strip_prefix('"').unwrap_or(value);
                self.strings
                    .insert(rest[..n].to_string(), value.to_string());
            }
            "TS" => {
                self.brk();
                self.table = Some(('\t', true));
            }
            "T&" if self.table.is_some() => self.table = self.table.map(|(t, _)| (t, true)),
            "TE" => {
                self.brk();
                self.table = None;
            }
            "nf" | "EX" | "Vb" | "fi" | "EE" | "Ve" => {
                self.brk();
                self.nofill = matches!(name, "nf" | "EX" | "Vb");
            }
            "br" | "RS" | "RE" | "in" | "ti" | "ce" | "YS" => self.brk(),
            "SH" | "SS" => {
                self.blank();
                self.break_after = true;
                let t = self.args(rest, " ");
                self.emit(t);
            }
            "B" | "I" | "SM" | "SB" | "UR" | "MT" => {
                let t = self.args(rest, " ");
                if !t.is_empty() {
                    self.emit(if name == "UR" || name == "MT" {
                        format!("<{t}>")
                    } else {
                        t
                    });
                }
            }
            "BR" | "BI" | "IB" | "IR" | "RI" | "RB" => {
                let t = self.args(rest, "");
                self.emit(t);
            }
            "UE" | "ME" | "OP" | "SY" => {
                let t = self.args(rest, " ");
                if !t.is_empty() {
                    if name == "SY" {
                        self.blank();
                    } else {
                        self.join = Some(if name == "OP" { " " } else { "" });
                    }
                    self.emit(if name == "OP" { format!("[{t}]") } else { t });
                }
                if name != "UE" && name != "ME" {
                    self.join = Some(" ");
                }
            }
            "TP" | "TQ" => {
                if name == "TP" {
                    self.blank();
                }
                self.brk();
                self.break_after = true;
            }
            "PP" | "LP" | "P" | "sp" | "HP" | "Sp" => self.blank(),
            "IP" => {
                self.blank();
                let tag = self.unescape(&first(), 0);
                if !tag.trim().is_empty() {
                    self.emit(tag);
                    self.join = Some(" ");
                }
            }
            _ if MDOC.contains(&name) => self.mdoc(name, rest),
            _ => {}
        }
    }
}
