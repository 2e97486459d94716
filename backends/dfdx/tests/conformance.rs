//! The shared conformance suite on the dfdx backend (dfdx's `Cpu` device), in f64 and f32.

simbal_conformance::conformance_suite!(dfdx_f64, || Some(simbal_dfdx::Dfdx::<f64>::cpu()));
simbal_conformance::conformance_suite!(dfdx_f32, || Some(simbal_dfdx::Dfdx::<f32>::cpu()));
