//! Reading an embedded fixture's JSON, and the comparison at the outside-oracle tolerance.

use crate::harness::util::{acquire, is_f64};
use serde_json::Value;
use simbal_core::Backend;

/// Runs `check` on the backend `make` builds (the check `name` is skipped, or fails under CI,
/// when it builds none) and each fixture of `list`, parsed.
pub(super) fn each<B: Backend>(
    make: &dyn Fn() -> Option<B>,
    name: &str,
    list: &[super::Fixture],
    mut check: impl FnMut(&B, Fx),
) {
    let Some(io) = acquire(make, name) else {
        return;
    };
    for fixture in list {
        check(&io, Fx::parse(fixture));
    }
}

// ----------------------------------------------------------------------------- JSON access

/// A parsed fixture.
pub struct Fx {
    /// The fixture's name.
    pub name: &'static str,
    v: Value,
}

impl Fx {
    pub fn parse(&(name, text): &super::Fixture) -> Self {
        let v: Value = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("fixture {name}: invalid JSON: {e}"));
        assert_eq!(v["name"].as_str(), Some(name), "fixture {name}: its name");
        Self { name, v }
    }
    /// The value at a JSON pointer (`/inputs/logits`).
    pub fn at(&self, ptr: &str) -> &Value {
        self.v
            .pointer(ptr)
            .unwrap_or_else(|| panic!("fixture {}: no {ptr}", self.name))
    }
    pub fn opt(&self, ptr: &str) -> Option<&Value> {
        self.v.pointer(ptr).filter(|v| !v.is_null())
    }
    /// An array's flat data (`{"shape", "dtype", "data"}` at `ptr`).
    pub fn data(&self, ptr: &str) -> Vec<f64> {
        data_of(self.name, self.at(ptr))
    }
    pub fn shape(&self, ptr: &str) -> Vec<usize> {
        let s = self.at(&format!("{ptr}/shape")).as_array().expect("shape");
        s.iter()
            .map(|d| d.as_u64().expect("dim") as usize)
            .collect()
    }
    pub fn f64(&self, ptr: &str) -> f64 {
        num(self.name, self.at(ptr))
    }
    pub fn usize(&self, ptr: &str) -> usize {
        self.at(ptr)
            .as_u64()
            .unwrap_or_else(|| panic!("fixture {}: {ptr} is not an integer", self.name))
            as usize
    }
    pub fn str(&self, ptr: &str) -> &str {
        self.at(ptr)
            .as_str()
            .unwrap_or_else(|| panic!("fixture {}: {ptr} is not a string", self.name))
    }
}

/// A number, or one of the strings `"nan"`, `"inf"`, `"-inf"`.
pub fn num(name: &str, v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().expect("f64"),
        Value::String(s) if s == "nan" => f64::NAN,
        Value::String(s) if s == "inf" => f64::INFINITY,
        Value::String(s) if s == "-inf" => f64::NEG_INFINITY,
        _ => panic!("fixture {name}: {v} is not a number"),
    }
}

pub fn data_of(name: &str, v: &Value) -> Vec<f64> {
    let d = v["data"]
        .as_array()
        .unwrap_or_else(|| panic!("fixture {name}: an array without data"));
    d.iter().map(|x| num(name, x)).collect()
}

// ----------------------------------------------------------------------------- comparison

/// The tolerance for the backend's element type: 1e-5 (`f64`), 1e-4 (`f32`).
pub fn tol<B: Backend>() -> f64 {
    if is_f64::<B::Elem>() {
        1e-5
    } else {
        1e-4
    }
}

/// `|got - want| <= tol * max(1, |want|)` element by element; panics naming the worst element.
pub fn near(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let mut worst: Option<(f64, usize)> = None;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let excess = (g - w).abs() / w.abs().max(1.0);
        let bad = excess.is_nan() || excess > tol;
        if bad && worst.is_none_or(|(x, _)| excess.is_nan() || excess > x) {
            worst = Some((excess, i));
        }
    }
    if let Some((excess, i)) = worst {
        panic!(
            "{what}[{i}]: simbal {}, oracle {}: error {excess:.3e} x max(1, |oracle|) > tol {tol:.0e}",
            got[i], want[i]
        );
    }
}

pub fn near1(what: &str, got: f64, want: f64, tol: f64) {
    near(what, &[got], &[want], tol);
}

pub fn ok<T, E: std::fmt::Debug>(what: &str, r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{what} returned Err({e:?})"))
}
