//! The conformance suite on the scalar reference backend itself, in both precisions. Agreement
//! checks are trivial here (the reference against itself, plus `Reference<f64>` for f32); the
//! finite differences, invariants, error and fuzz checks are not.

use simbal_core::Reference;

simbal_conformance::conformance_suite!(reference_f64, || Some(Reference::<f64>::new()));
simbal_conformance::conformance_suite!(reference_f32, || Some(Reference::<f32>::new()));
