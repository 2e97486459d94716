//! The MoE training demo (the body of `examples/dfdx_train.rs`): the task loss falls while the
//! router trains on simbal's gradient.

use simbal_dfdx::{train_demo, train_demo_with, DemoConfig};

#[test]
fn demo_task_loss_falls() {
    let s = train_demo(80).unwrap();
    assert_eq!(s.steps.len(), 80);
    let (a, b) = (s.initial_loss().unwrap(), s.final_loss().unwrap());
    assert!(b < 0.5 * a, "task loss {a} -> {b}");
    for st in &s.steps {
        assert!(st.task_loss.is_finite() && st.simbal.is_finite());
        assert!(st.max_vio.is_finite() && st.max_vio >= 0.0);
    }
    // The router starts orthogonal (SimBal 0) and moves: its weight received gradient steps.
    assert!(s.steps[0].simbal.abs() < 1e-5, "{}", s.steps[0].simbal);
    assert!(s.steps.iter().any(|st| st.simbal > 1e-4));
}

#[test]
fn demo_with_lbl_and_without_simbal() {
    let s = train_demo_with(&DemoConfig {
        steps: 40,
        lbl_alpha: 0.01,
        simbal_lambda: 0.0,
        k: 1,
        ..DemoConfig::default()
    })
    .unwrap();
    let (a, b) = (s.initial_loss().unwrap(), s.final_loss().unwrap());
    assert!(b < a, "task loss {a} -> {b}");
    // LBL is near alpha (its value at perfect balance); SimBal is off.
    assert!(s.steps.iter().all(|st| st.simbal == 0.0));
    assert!(
        s.steps.iter().all(|st| st.lbl > 0.005 && st.lbl < 0.05),
        "{:?}",
        s.steps[0]
    );
    assert!(matches!(
        train_demo_with(&DemoConfig {
            tokens: 0,
            ..DemoConfig::default()
        }),
        Err(simbal_core::SimbalError::ZeroDim { .. })
    ));
}
