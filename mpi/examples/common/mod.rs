//! What both equality examples share: the relative difference they check and their `main`.

use mpi::collective::SystemOperation;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use std::error::Error;

pub type Res<T> = Result<T, Box<dyn Error>>;

/// `max |a - b| / max |b|` (0 when they are equal, also for two zero vectors).
pub fn rel(a: &[f64], b: &[f64]) -> f64 {
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.abs()).fold(0.0, f64::max);
    if diff == 0.0 {
        0.0
    } else {
        diff / scale
    }
}

/// Initialises MPI, runs `checks` on the world and exits with 0 when every rank passed (1 when
/// one failed). An error aborts every rank at once: the others may wait in a collective.
pub fn run_ranks(name: &str, checks: impl FnOnce(&SimpleCommunicator) -> Res<bool>) -> ! {
    let Some(universe) = mpi::initialize() else {
        eprintln!("MPI was already initialised");
        std::process::exit(2);
    };
    let world = universe.world();
    let ok = match checks(&world) {
        Ok(ok) => ok,
        Err(e) => {
            eprintln!("rank {}: error: {e}", world.rank());
            world.abort(3);
        }
    };
    let mut all_ok = 0i32;
    world.all_reduce_into(&i32::from(ok), &mut all_ok, SystemOperation::min());
    if world.rank() == 0 {
        println!(
            "{name} on {} ranks: {}",
            world.size(),
            if all_ok == 1 { "PASS" } else { "FAIL" }
        );
    }
    drop(universe);
    std::process::exit(if all_ok == 1 { 0 } else { 1 });
}
