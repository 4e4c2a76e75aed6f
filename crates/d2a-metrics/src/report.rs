//! A named, per-slice evaluation report: what `d2a eval-masks` and `d2a eval` print and write.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::{Confusion, Result, Scores, Summary};

/// The metrics and counts of one named slice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SliceReport {
    /// The slice's name (the file stem for slice folders).
    pub name: String,
    /// Its six metrics.
    #[serde(flatten)]
    pub scores: Scores,
    /// Its counts.
    #[serde(flatten)]
    pub counts: Confusion,
}

/// An evaluation over named slices.
///
/// Its JSON form is the schema of `--json`:
/// `{"n_slices", "per_slice_mean": {six metrics}, "global": {six metrics},
/// "slices": [{"name", six metrics, "tp", "fp", "tn", "fn"}, ...]}`, slices sorted by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Number of slices.
    pub n_slices: usize,
    /// Mean over slices.
    pub per_slice_mean: Scores,
    /// Metrics of the summed counts.
    pub global: Scores,
    /// Every slice, sorted by name.
    pub slices: Vec<SliceReport>,
}

impl Report {
    /// Builds the report of named counts; they are sorted by name. Zero slices is an error.
    pub fn new(named: impl IntoIterator<Item = (String, Confusion)>) -> Result<Self> {
        let mut slices: Vec<SliceReport> = named
            .into_iter()
            .map(|(name, counts)| SliceReport {
                name,
                scores: counts.scores(),
                counts,
            })
            .collect();
        slices.sort_by(|a, b| a.name.cmp(&b.name));
        let counts: Vec<Confusion> = slices.iter().map(|s| s.counts).collect();
        let summary = Summary::from_confusions(&counts)?;
        Ok(Self {
            n_slices: summary.n_slices,
            per_slice_mean: summary.per_slice_mean,
            global: summary.global,
            slices,
        })
    }

    /// A plain-text table of both aggregates, one metric a row.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<12} {:>14} {:>10}\n",
            "metric", "per-slice mean", "global"
        );
        for (name, get) in Scores::FIELDS {
            // Writing to a String cannot fail.
            let _ = writeln!(
                out,
                "{name:<12} {:>14.4} {:>10.4}",
                get(&self.per_slice_mean),
                get(&self.global)
            );
        }
        let _ = write!(out, "slices: {}", self.n_slices);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_documented_schema() {
        let report = Report::new([
            (
                "b".to_string(),
                Confusion {
                    tp: 1,
                    fp: 0,
                    tn: 2,
                    fn_: 1,
                },
            ),
            (
                "a".to_string(),
                Confusion {
                    tp: 0,
                    fp: 0,
                    tn: 4,
                    fn_: 0,
                },
            ),
        ])
        .unwrap();
        let json = serde_json::to_value(&report).unwrap();
        let keys =
            |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        let six = [
            "dice",
            "iou",
            "pixel_error",
            "precision",
            "recall",
            "specificity",
        ];
        let mut top = keys(&json);
        top.sort();
        assert_eq!(top, ["global", "n_slices", "per_slice_mean", "slices"]);
        let mut mean_keys = keys(&json["per_slice_mean"]);
        mean_keys.sort();
        assert_eq!(mean_keys, six);
        assert_eq!(json["n_slices"], 2);
        assert_eq!(json["slices"][0]["name"], "a");
        assert_eq!(json["slices"][0]["dice"], 1.0);
        assert_eq!(json["slices"][1]["fn"], 1);
        assert_eq!(json["slices"][1]["dice"], 2.0 / 3.0);
        let mut slice_keys = keys(&json["slices"][1]);
        slice_keys.sort();
        let mut expected: Vec<&str> = six
            .iter()
            .copied()
            .chain(["fn", "fp", "name", "tn", "tp"])
            .collect();
        expected.sort();
        assert_eq!(slice_keys, expected);
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back, report);
    }

    #[test]
    fn table_lists_every_metric() {
        let report = Report::new([(
            "x".to_string(),
            Confusion {
                tp: 1,
                fp: 1,
                tn: 1,
                fn_: 1,
            },
        )])
        .unwrap();
        let table = report.table();
        for (name, _) in Scores::FIELDS {
            assert!(table.contains(name), "{table}");
        }
        assert!(
            table.contains("0.5000") && table.contains("slices: 1"),
            "{table}"
        );
    }
}
