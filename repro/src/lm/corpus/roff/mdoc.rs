//! The mdoc(7) macros: their words kept, the macro names dropped.

use super::{split_args, Roff};

/// Macros of mdoc(7) (the callable and the structural ones).
pub(super) const MDOC: &[&str] = &[
    "Ac", "Ad", "An", "Ao", "Ap", "Aq", "Ar", "At", "Bc", "Bd", "Bf", "Bk", "Bl", "Bo", "Bq",
    "Brc", "Bro", "Brq", "Bsx", "Bx", "Cd", "Cm", "D1", "Db", "Dc", "Dd", "Dl", "Do", "Dq", "Dt",
    "Dv", "Dx", "Ec", "Ed", "Ef", "Ek", "El", "Em", "En", "Eo", "Er", "Es", "Ev", "Ex", "Fa", "Fc",
    "Fd", "Fl", "Fn", "Fo", "Fr", "Ft", "Fx", "Hf", "Ic", "In", "It", "Lb", "Li", "Lk", "Lp", "Ms",
    "Mt", "Nd", "Nm", "No", "Ns", "Nx", "Oc", "Oo", "Op", "Os", "Ot", "Ox", "Pa", "Pc", "Pf", "Po",
    "Pp", "Pq", "Qc", "Ql", "Qo", "Qq", "Re", "Rs", "Rv", "Sc", "Sh", "Sm", "So", "Sq", "Ss", "St",
    "Sx", "Sy", "Ta", "Tg", "Tn", "Ud", "Ux", "Va", "Vt", "Xc", "Xo", "Xr", "%A", "%B", "%C", "%D",
    "%I", "%J", "%N", "%O", "%P", "%Q", "%R", "%T", "%U", "%V",
];

impl Roff {
    pub(super) fn mdoc(&mut self, name: &str, rest: &str) {
        match name {
            "Dd" | "Dt" | "Os" | "Bk" | "Ek" | "Rs" | "Re" | "Db" | "Bf" | "Ef" | "Sm" | "Tg"
            | "Ex" | "Rv" | "Hf" | "Ot" => return,
            "Bl" | "El" | "Bd" | "Ed" => {
                self.brk();
                self.nofill =
                    name == "Bd" && (rest.contains("-literal") || rest.contains("-unfilled"));
                return;
            }
            "Pp" | "Lp" => self.blank(),
            "Sh" | "Ss" | "It" => {
                self.blank();
                self.break_after = true;
            }
            "D1" | "Dl" => {
                self.brk();
                self.break_after = true;
            }
            _ => {}
        }
        let mut toks = vec![(name.to_string(), false)];
        toks.extend(split_args(rest));
        let (mut out, mut nospace, mut dash) = (String::new(), true, false);
        let mut closers: Vec<&str> = Vec::new();
        let mut i = 0;
        let is_macro = |t: &(String, bool)| !t.1 && MDOC.contains(&t.0.as_str());
        while i < toks.len() {
            let (t, quoted) = (&toks[i].0, toks[i].1);
            i += 1;
            let mut word = None;
            if !quoted && MDOC.contains(&t.as_str()) {
                dash = t == "Fl";
                let next_word = toks.get(i).filter(|n| !is_macro(n)).map(|n| n.0.clone());
                let (open, close) = match t.as_str() {
                    "Op" | "Oo" => ("[", "]"),
                    "Pq" | "Po" => ("(", ")"),
                    "Dq" | "Do" | "Qq" | "Qo" => ("\"", "\""),
                    "Sq" | "So" | "Ql" => ("'", "'"),
                    "Bq" | "Bo" => ("[", "]"),
                    "Brq" | "Bro" => ("{", "}"),
                    "Aq" | "Ao" => ("<", ">"),
                    _ => ("", ""),
                };
                match t.as_str() {
                    "Fl" if next_word.is_none() => word = Some("-".to_string()),
                    "Ns" | "Pf" => nospace = true,
                    "Ap" => {
                        out.push('\'');
                        nospace = true;
                    }
                    "St" | "An" if next_word.as_deref().is_some_and(|w| w.starts_with('-')) => {
                        i += 1
                    }
                    "Nm" => match (next_word, &self.mdoc_name) {
                        (Some(w), None) => self.mdoc_name = Some(self.unescape(&w, 0)),
                        (None, Some(n)) => word = Some(n.clone()),
                        _ => {}
                    },
                    "Xr" => {
                        if let (Some(n), Some(s)) =
                            (next_word, toks.get(i + 1).filter(|n| !is_macro(n)))
                        {
                            word = Some(format!(
                                "{}({})",
                                self.unescape(&n, 0),
                                self.unescape(&s.0, 0)
                            ));
                            i += 2;
                        }
                    }
                    "Oc" | "Pc" | "Dc" | "Qc" | "Sc" | "Bc" | "Brc" | "Ac" => {
                        out.push_str(close);
                        nospace = false;
                    }
                    _ if !open.is_empty() => {
                        if !out.is_empty() && !nospace {
                            out.push(' ');
                        }
                        out.push_str(open);
                        nospace = true;
                        if !matches!(
                            t.as_str(),
                            "Oo" | "Po" | "Do" | "Qo" | "So" | "Bo" | "Bro" | "Ao"
                        ) {
                            closers.push(close);
                        }
                    }
                    _ => {}
                }
                if word.is_none() {
                    continue;
                }
            }
            let w = word.unwrap_or_else(|| self.unescape(t, 0));
            if w.is_empty() {
                continue;
            }
            let closing = matches!(
                w.as_str(),
                "." | "," | ";" | ":" | ")" | "]" | "?" | "!" | "}"
            );
            let w = if dash && !closing && w != "-" {
                format!("-{w}")
            } else {
                w
            };
            if !out.is_empty() && !nospace && !closing {
                out.push(' ');
            }
            out.push_str(&w);
            nospace = w == "(" || w == "[";
        }
        closers.iter().rev().for_each(|c| out.push_str(c));
        if !out.trim().is_empty() {
            self.emit(out);
        } else if name == "It" {
            self.break_after = false;
        }
    }
}
