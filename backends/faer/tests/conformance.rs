//! The shared conformance suite (SPEC.md) on the faer backend, in f64 and f32, on all rayon
//! threads and sequentially.

simbal_conformance::conformance_suite!(faer_f64, || Some(simbal_faer::Faer::<f64>::new()));
simbal_conformance::conformance_suite!(faer_f32, || Some(simbal_faer::Faer::<f32>::new()));
simbal_conformance::conformance_suite!(faer_f64_seq, || Some(simbal_faer::Faer::<f64>::with_par(
    simbal_faer::Par::Seq
)));
simbal_conformance::conformance_suite!(faer_f32_seq, || Some(simbal_faer::Faer::<f32>::with_par(
    simbal_faer::Par::Seq
)));
