//! What every check shares: backend acquisition, the proptest runner and the comparisons
//! ([`util`]), random cases ([`gen`]), running a router and reading what it wrote ([`run`]), and
//! one module per kind of check with its common machinery: [`compare`] (whole passes against
//! the references), [`fd`] (finite differences), [`kernel`] (the kernel-check driver and the
//! buffer sources of the ops' kernel buffers), [`errors`] (error matching and a forwarded
//! router), [`fuzz`] (arbitrary input and the fuzz-check driver).

pub mod compare;
pub mod errors;
pub mod fd;
pub mod fuzz;
pub mod gen;
pub mod kernel;
pub mod run;
pub mod util;
