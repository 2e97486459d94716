//! The balancing methods compared, with their coefficients and router initialisation.

use crate::error::{ReproError, Result};
use serde::Serialize;
use simbal_core::{BiasUpdateConfig, LblConfig, LossConfig, SimBalConfig, SimBalNorm};

/// A load-balancing method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Method {
    /// No balancing at all.
    None,
    /// Switch Transformer load-balancing loss.
    Switch,
    /// SimBal, `lambda ||R^T R - I||_1` (the paper's loss).
    SimBal,
    /// SimBal with the squared Frobenius norm.
    SimBalFro,
    /// SimBal on column-normalised `R`, mean of squares.
    SimBalScaleFree,
    /// Aux-loss-free bias balancing (DeepSeek-V3).
    Bias,
    /// Aux-loss-free bias balancing plus SimBal.
    BiasSimBal,
}

/// Coefficients of the methods.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Coefficients {
    /// Switch LBL `alpha`.
    pub lbl_alpha: f64,
    /// SimBal `lambda` (all three norms).
    pub simbal_lambda: f64,
    /// Bias update rate `u`.
    pub bias_rate: f64,
}

impl Default for Coefficients {
    fn default() -> Self {
        Self {
            lbl_alpha: 0.01,
            simbal_lambda: 0.1,
            bias_rate: 1e-3,
        }
    }
}

/// Which methods start from an orthogonal router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum InitPolicy {
    /// As the paper: SimBal methods orthogonal, the others Gaussian.
    #[default]
    Paper,
    /// Every method orthogonal.
    Orthogonal,
    /// Every method Gaussian.
    Gaussian,
}

impl Method {
    /// Every method, in report order.
    pub const ALL: [Method; 7] = [
        Method::None,
        Method::Switch,
        Method::SimBal,
        Method::SimBalFro,
        Method::SimBalScaleFree,
        Method::Bias,
        Method::BiasSimBal,
    ];

    /// The language model's methods (the six): every method but SimBal-Frobenius.
    pub const LM: [Method; 6] = [
        Method::None,
        Method::Switch,
        Method::SimBal,
        Method::SimBalScaleFree,
        Method::Bias,
        Method::BiasSimBal,
    ];

    /// Short name used on the command line, in files and in plots.
    pub fn name(self) -> &'static str {
        match self {
            Method::None => "none",
            Method::Switch => "switch",
            Method::SimBal => "simbal",
            Method::SimBalFro => "simbal-fro",
            Method::SimBalScaleFree => "simbal-sf",
            Method::Bias => "bias",
            Method::BiasSimBal => "bias+simbal",
        }
    }

    /// Parses a name from [`Method::name`].
    pub fn parse(s: &str) -> Result<Method> {
        Method::ALL
            .iter()
            .copied()
            .find(|m| m.name() == s.trim())
            .ok_or_else(|| {
                let names: Vec<_> = Method::ALL.iter().map(|m| m.name()).collect();
                ReproError::Config(format!("unknown method {s:?}; known: {}", names.join(", ")))
            })
    }

    /// Whether SimBal (any norm) is part of the method.
    pub fn uses_simbal(self) -> bool {
        matches!(
            self,
            Method::SimBal | Method::SimBalFro | Method::SimBalScaleFree | Method::BiasSimBal
        )
    }

    /// Whether the aux-loss-free bias is updated.
    pub fn uses_bias(self) -> bool {
        matches!(self, Method::Bias | Method::BiasSimBal)
    }

    /// The auxiliary losses of the method.
    pub fn losses(self, c: &Coefficients) -> LossConfig {
        let simbal = |norm| SimBalConfig {
            lambda: c.simbal_lambda,
            norm,
        };
        match self {
            Method::None | Method::Bias => LossConfig::none(),
            Method::Switch => LossConfig::none().with_lbl(LblConfig {
                alpha: c.lbl_alpha,
                ..LblConfig::default()
            }),
            Method::SimBal | Method::BiasSimBal => {
                LossConfig::none().with_simbal(simbal(SimBalNorm::L1))
            }
            Method::SimBalFro => LossConfig::none().with_simbal(simbal(SimBalNorm::FrobeniusSq)),
            Method::SimBalScaleFree => {
                LossConfig::none().with_simbal(simbal(SimBalNorm::ScaleFree))
            }
        }
    }

    /// The bias update, if the method has one.
    pub fn bias_update(self, c: &Coefficients) -> Option<BiasUpdateConfig> {
        self.uses_bias().then_some(BiasUpdateConfig {
            rate: c.bias_rate,
            centred: false,
        })
    }

    /// Whether the router starts orthogonal under `policy`.
    pub fn orthogonal_init(self, policy: InitPolicy) -> bool {
        match policy {
            InitPolicy::Paper => self.uses_simbal(),
            InitPolicy::Orthogonal => true,
            InitPolicy::Gaussian => false,
        }
    }

    /// One line saying what the method does, with its coefficients and initialisation.
    pub fn describe(self, c: &Coefficients, policy: InitPolicy) -> String {
        let what = match self {
            Method::None => "no auxiliary loss".to_string(),
            Method::Switch => format!("Switch LBL, alpha = {}", c.lbl_alpha),
            Method::SimBal => format!("SimBal L1 ||R^T R - I||_1, lambda = {}", c.simbal_lambda),
            Method::SimBalFro => format!(
                "SimBal FrobeniusSq ||R^T R - I||_F^2, lambda = {}",
                c.simbal_lambda
            ),
            Method::SimBalScaleFree => format!(
                "SimBal ScaleFree mean((R_n^T R_n - I)^2), lambda = {}",
                c.simbal_lambda
            ),
            Method::Bias => format!("aux-loss-free bias, u = {}", c.bias_rate),
            Method::BiasSimBal => format!(
                "aux-loss-free bias u = {} + SimBal L1 lambda = {}",
                c.bias_rate, c.simbal_lambda
            ),
        };
        let init = if self.orthogonal_init(policy) {
            "orthogonal init"
        } else {
            "Gaussian init"
        };
        format!("{what}; {init}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_errors() {
        for m in Method::ALL {
            assert_eq!(Method::parse(m.name()).unwrap(), m);
        }
        assert!(Method::parse("lbl").is_err());
    }

    #[test]
    fn each_method_configures_what_it_says() {
        let c = Coefficients::default();
        assert_eq!(Method::None.losses(&c), LossConfig::none());
        assert_eq!(Method::Switch.losses(&c).lbl.map(|l| l.alpha), Some(0.01));
        assert_eq!(
            Method::SimBal.losses(&c).simbal.map(|s| s.norm),
            Some(SimBalNorm::L1)
        );
        assert!(Method::Bias.bias_update(&c).is_some() && Method::Bias.losses(&c).simbal.is_none());
        assert!(Method::BiasSimBal.losses(&c).simbal.is_some());
        assert!(Method::SimBal.orthogonal_init(InitPolicy::Paper));
        assert!(!Method::Switch.orthogonal_init(InitPolicy::Paper));
        assert!(Method::Switch.orthogonal_init(InitPolicy::Orthogonal));
    }
}
