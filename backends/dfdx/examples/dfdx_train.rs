//! Trains a small MoE layer (a simbal-routed dfdx model: an `UnbiasedLinear` router and four
//! expert MLPs) with dfdx's Adam; the router's gradient comes from simbal (SimBal plus the task
//! loss's gate gradient). Prints the task loss, SimBal and MaxVio every few steps.
//!
//! `cargo run -p simbal-dfdx --example dfdx_train [steps]`

fn main() -> Result<(), simbal_core::SimbalError> {
    let steps = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    let summary = simbal_dfdx::train_demo(steps)?;
    let every = (steps / 15).max(1);
    println!(
        "{:>5} {:>12} {:>10} {:>8}",
        "step", "task loss", "SimBal", "MaxVio"
    );
    for s in &summary.steps {
        if s.step % every == 0 || s.step + 1 == steps {
            println!(
                "{:>5} {:>12.6} {:>10.6} {:>8.3}",
                s.step, s.task_loss, s.simbal, s.max_vio
            );
        }
    }
    if let (Some(a), Some(b)) = (summary.initial_loss(), summary.final_loss()) {
        println!("task loss {a:.6} -> {b:.6}");
    }
    Ok(())
}
