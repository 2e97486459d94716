//! Roff escapes (`\f`, `\(xx`, `\*`, `\[...]`, ...) resolved to plain characters.

use super::Roff;

/// A name after `\*`, `\f`, `\n`...: `(xx`, `[long]` or one character.
fn name_arg(cs: &[char], i: &mut usize) -> String {
    let take = |from: usize, to: usize| {
        cs[from.min(cs.len())..to.min(cs.len())]
            .iter()
            .collect::<String>()
    };
    match cs.get(*i) {
        Some('(') => {
            *i += 3;
            take(*i - 2, *i)
        }
        Some('[') => {
            let end = cs[*i..]
                .iter()
                .position(|&c| c == ']')
                .map_or(cs.len(), |p| *i + p);
            let s = take(*i + 1, end);
            *i = end + 1;
            s
        }
        Some(&c) => {
            *i += 1;
            c.to_string()
        }
        None => String::new(),
    }
}

/// A delimited argument such as `'...'` after `\h`, `\w`, `\N`.
fn delimited(cs: &[char], i: &mut usize) -> String {
    let Some(&d) = cs.get(*i) else {
        return String::new();
    };
    let end = cs[*i + 1..]
        .iter()
        .position(|&c| c == d)
        .map_or(cs.len(), |p| *i + 1 + p);
    let s = cs[(*i + 1).min(end)..end].iter().collect();
    *i = end + 1;
    s
}

/// A named character (`\(xx`, `\[name]`) as plain text; unknown ones are dropped.
fn named_char(n: &str) -> String {
    let s = match n {
        "aq" | "cq" | "oq" | "aa" | "fm" => "'",
        "em" | "en" | "hy" | "mi" | "\\-" => "-",
        "lq" | "rq" | "dq" | "Bq" | "bq" => "\"",
        "bu" | "**" => "*",
        "co" => "(c)",
        "rg" => "(R)",
        "tm" => "(TM)",
        "pl" => "+",
        "mu" => "x",
        "di" | "sl" => "/",
        "eq" => "=",
        "ti" | "a~" | "ap" => "~",
        "ha" | "a^" => "^",
        "ga" => "`",
        "ul" | "ru" => "_",
        "rs" => "\\",
        "ba" | "br" | "or" | "bv" => "|",
        "->" | "rA" => "->",
        "<-" | "lA" => "<-",
        "<>" => "<->",
        ">=" => ">=",
        "<=" => "<=",
        "!=" => "!=",
        "+-" => "+-",
        "Fo" | "fo" | "la" => "<",
        "Fc" | "fc" | "ra" => ">",
        "lB" => "[",
        "rB" => "]",
        "lC" => "{",
        "rC" => "}",
        "at" => "@",
        "sh" => "#",
        "Do" => "$",
        "12" => "1/2",
        "de" => "°",
        "sc" => "§",
        "ss" => "ß",
        "ae" => "æ",
        "AE" => "Æ",
        "o/" => "ø",
        "O/" => "Ø",
        "Eu" | "eu" => "€",
        "Po" => "£",
        _ => "",
    };
    if !s.is_empty() {
        return s.into();
    }
    if let Some(hex) = n.strip_prefix('u') {
        let hex = hex.split('_').next().unwrap_or(hex);
        return u32::from_str_radix(hex, 16)
            .ok()
            .and_then(char::from_u32)
            .map(String::from)
            .unwrap_or_default();
    }
    let mut it = n.chars();
    let (Some(a), Some(b), None) = (it.next(), it.next(), it.next()) else {
        return String::new();
    };
    let (from, to) = match a {
        '*' if b.is_ascii_lowercase() => ("abgdezyhiklmncoprstufxqw", "αβγδεζηθικλμνξοπρστυφχψω"),
        '*' => ("ABGDEZYHIKLMNCOPRSTUFXQW", "ΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩ"),
        '\'' => ("aeiouyAEIOUY", "áéíóúýÁÉÍÓÚÝ"),
        '`' => ("aeiouAEIOU", "àèìòùÀÈÌÒÙ"),
        ':' => ("aeiouyAEIOU", "äëïöüÿÄËÏÖÜ"),
        '^' => ("aeiouAEIOU", "âêîôûÂÊÎÔÛ"),
        '~' => ("anoANO", "ãñõÃÑÕ"),
        ',' => ("cC", "çÇ"),
        'o' => ("aA", "åÅ"),
        _ => return String::new(),
    };
    from.chars()
        .position(|c| c == b)
        .and_then(|p| to.chars().nth(p))
        .map(String::from)
        .unwrap_or_default()
}

impl Roff {
    pub(super) fn string(&mut self, name: &str, depth: u8) -> String {
        if let Some(v) = self.strings.get(name).cloned() {
            return if depth < 4 {
                self.unescape(&v, depth + 1)
            } else {
                String::new()
            };
        }
        match name {
            "lq" | "rq" | "L\"" | "R\"" | "C`" | "C'" | "Lq" | "Rq" | "Q" | "U" => "\"",
            "Aq" => "'",
            "Tm" | "trademark" => "(TM)",
            "R" => "(R)",
            "C+" => "C++",
            "--" => "--",
            "Ba" => "|",
            "Pi" => "pi",
            _ => "",
        }
        .into()
    }

    /// Resolves the escapes of one line; `\c` sets `cont`.
    pub(super) fn unescape(&mut self, s: &str, depth: u8) -> String {
        let cs: Vec<char> = s.chars().collect();
        let mut out = String::with_capacity(s.len());
        let mut i = 0;
        while i < cs.len() {
            let c = cs[i];
            i += 1;
            if c != '\\' {
                out.push(c);
                continue;
            }
            let Some(&e) = cs.get(i) else { break };
            i += 1;
            match e {
                '"' | '#' | '!' | '?' => break,
                'f' | 'F' | 'm' | 'M' | 'g' | 'k' | 'n' | 'V' | 'Y' | '$' => {
                    if e == 'n' && matches!(cs.get(i), Some('+' | '-')) {
                        i += 1;
                    }
                    name_arg(&cs, &mut i);
                }
                's' => {
                    if matches!(cs.get(i), Some('+' | '-')) {
                        i += 1;
                    }
                    match cs.get(i) {
                        Some('(' | '[') => drop(name_arg(&cs, &mut i)),
                        Some('\'') => drop(delimited(&cs, &mut i)),
                        Some(d) if d.is_ascii_digit() => {
                            i += 1;
                            if matches!(d, '1'..='3') && cs.get(i).is_some_and(char::is_ascii_digit)
                            {
                                i += 1;
                            }
                        }
                        _ => {}
                    }
                }
                '*' => {
                    let n = name_arg(&cs, &mut i);
                    out.push_str(&self.string(&n, depth));
                }
                '(' | '[' => {
                    i -= 1;
                    let n = name_arg(&cs, &mut i);
                    out.push_str(&named_char(&n));
                }
                'C' => out.push_str(&named_char(&delimited(&cs, &mut i))),
                'N' => {
                    let code = delimited(&cs, &mut i)
                        .parse::<u32>()
                        .ok()
                        .and_then(char::from_u32);
                    out.extend(code);
                }
                'h' | 'v' | 'w' | 'l' | 'L' | 'o' | 'D' | 'b' | 'x' | 'X' | 'Z' | 'R' | 'A'
                | 'B' => {
                    drop(delimited(&cs, &mut i));
                }
                '-' => out.push('-'),
                'e' | 'E' | '\\' => out.push('\\'),
                ' ' | '~' | '0' => out.push(' '),
                't' => out.push('\t'),
                'c' => self.cont = true,
                '&' | ':' | '/' | ',' | '%' | '|' | '^' | ')' | '{' | '}' | 'p' | 'u' | 'd'
                | 'r' | 'a' | 'z' => {}
                other => out.push(other),
            }
        }
        out
    }
}
