//! simbal facade
