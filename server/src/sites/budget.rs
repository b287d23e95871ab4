//! A site's privacy budget: the total epsilon its differentially private
//! answers may spend over its lifetime (`[site] privacy_budget`), with what
//! was spent kept in the site's data dir so a restart does not refill it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The file in the data dir holding what was spent.
const FILE: &str = "privacy_budget.json";

#[derive(Debug, Default, Serialize, Deserialize)]
struct Spent {
    spent: f64,
}

/// The budget of one site process.
#[derive(Debug)]
pub struct PrivacyBudget {
    path: PathBuf,
    total: f64,
    spent: Mutex<f64>,
}

impl PrivacyBudget {
    /// The budget of `total` epsilon, with what earlier runs spent read
    /// from `data_dir`.
    pub fn open(data_dir: &Path, total: f64) -> Result<PrivacyBudget, String> {
        let path = data_dir.join(FILE);
        let spent = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice::<Spent>(&bytes)
                    .map_err(|e| format!("{}: {e}", path.display()))?
                    .spent
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0.0,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        Ok(PrivacyBudget {
            path,
            total,
            spent: Mutex::new(spent),
        })
    }

    /// Charges `epsilon`, persisted before it counts; returns what is left.
    /// Refused, with nothing charged, when it would exceed the budget.
    pub fn spend(&self, epsilon: f64) -> Result<f64, String> {
        let mut spent = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        let after = *spent + epsilon;
        if after > self.total + 1e-12 {
            return Err(format!(
                "the privacy budget is exhausted: {:.3} of {:.3} spent, and this answer costs \
                 epsilon {epsilon}",
                *spent, self.total
            ));
        }
        let bytes = serde_json::to_vec(&Spent { spent: after }).map_err(|e| e.to_string())?;
        fedsql_connectors::fsutil::write_atomic(&self.path, &bytes)
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        *spent = after;
        Ok(self.total - after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spending_stops_at_the_budget_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let budget = PrivacyBudget::open(dir.path(), 1.0).unwrap();
        assert!((budget.spend(0.4).unwrap() - 0.6).abs() < 1e-9);
        assert!((budget.spend(0.4).unwrap() - 0.2).abs() < 1e-9);
        let refused = budget.spend(0.4).unwrap_err();
        assert!(refused.contains("exhausted"), "{refused}");
        // A new process reads what was spent.
        let reopened = PrivacyBudget::open(dir.path(), 1.0).unwrap();
        assert!(reopened.spend(0.4).is_err());
        assert!((reopened.spend(0.2).unwrap()).abs() < 1e-9);
    }
}
