//! The statistics of the seed paper's Table 1 and beyond: per arm the IQR filter, then mean,
//! SD and median; and Welch's t-test between two arms (unequal variances).

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, StudentsT};

use crate::frames::Frame;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArmStats {
    pub arm: String,
    pub n: usize,
    pub kept: usize,
    pub mean: f64,
    /// Sample standard deviation (n − 1) of the kept values; 0 with fewer than two.
    pub sd: f64,
    pub median: f64,
}

/// Upload bytes of each arm's frames (the frames' values), arms in order of first appearance.
pub fn uploads_by_arm(frames: &[Frame]) -> Vec<(String, Vec<f64>)> {
    let mut arms: Vec<(String, Vec<f64>)> = Vec::new();
    for f in frames {
        match arms.iter_mut().find(|(a, _)| *a == f.arm) {
            Some((_, v)) => v.push(f.upload_bytes as f64),
            None => arms.push((f.arm.clone(), vec![f.upload_bytes as f64])),
        }
    }
    arms
}

/// One arm's summary (the IQR filter, then mean, SD and median), and the values it kept.
pub fn summarize(arm: String, values: &[f64]) -> (ArmStats, Vec<f64>) {
    let kept = iqr_filter(values);
    (ArmStats { arm, n: values.len(), kept: kept.len(), mean: mean(&kept), sd: sd(&kept), median: quantile(&kept, 0.5) }, kept)
}

/// Per arm, in order of first appearance: the IQR filter, then mean, SD and median.
pub fn arm_stats(frames: &[Frame]) -> Vec<ArmStats> {
    uploads_by_arm(frames).into_iter().map(|(arm, values)| summarize(arm, &values).0).collect()
}

/// Keeps x when Q1 − 1.5·IQR < x < Q3 + 1.5·IQR (strict, as the paper states). Values inside
/// the box (Q1 ≤ x ≤ Q3) are never outliers: that matters only when IQR = 0 (one value, or
/// identical values), where the strict fences alone would drop everything.
pub fn iqr_filter(values: &[f64]) -> Vec<f64> {
    let q1 = quantile(values, 0.25);
    let q3 = quantile(values, 0.75);
    let iqr = q3 - q1;
    values.iter().copied().filter(|&x| (q1 - 1.5 * iqr < x && x < q3 + 1.5 * iqr) || (q1 <= x && x <= q3)).collect()
}

/// The inclusive quantile (Excel's QUARTILE.INC, numpy's default "linear"): position
/// p·(n − 1) in the sorted values, interpolated. NaN when empty.
pub fn quantile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = p * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 }
}

pub fn sd(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let m = mean(v);
    (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}


/// Welch's two-sided t-test of equal means: t, the Welch–Satterthwaite degrees of freedom and
/// the p-value. `None` with fewer than two values on a side, or when both have no variance.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Welch {
    pub t: f64,
    pub df: f64,
    pub p: f64,
}

pub fn welch(a: &[f64], b: &[f64]) -> Option<Welch> {
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let (va, vb) = (sd(a).powi(2) / a.len() as f64, sd(b).powi(2) / b.len() as f64);
    if va + vb == 0.0 {
        return None;
    }
    let t = (mean(a) - mean(b)) / (va + vb).sqrt();
    let df = (va + vb).powi(2) / (va.powi(2) / (a.len() - 1) as f64 + vb.powi(2) / (b.len() - 1) as f64);
    let dist = StudentsT::new(0.0, 1.0, df).ok()?;
    Some(Welch { t, df, p: 2.0 * dist.cdf(-t.abs()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quartiles_are_inclusive() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        assert_eq!(quantile(&v, 0.25), 2.75);
        assert_eq!(quantile(&v, 0.5), 4.5);
        assert_eq!(quantile(&v, 0.75), 6.25);
    }

    #[test]
    fn a_zero_iqr_keeps_the_box() {
        assert_eq!(iqr_filter(&[45_000.0]), vec![45_000.0]);
        assert_eq!(iqr_filter(&[5.0, 5.0, 5.0, 5.0, 100.0]), vec![5.0; 4]);
    }

    #[test]
    fn iqr_drops_the_outlier_only() {
        // Sorted: 44,000 44,500 45,000 45,500 46,000 48,000 90,000. Q1 at position 1.5 =
        // 44,750; Q3 at 4.5 = 47,000; IQR 2,250: keep 41,375 < x < 50,375.
        let v = [44_000.0, 45_000.0, 46_000.0, 44_500.0, 45_500.0, 90_000.0, 48_000.0];
        assert_eq!((quantile(&v, 0.25), quantile(&v, 0.75)), (44_750.0, 47_000.0));
        assert_eq!(iqr_filter(&v), vec![44_000.0, 45_000.0, 46_000.0, 44_500.0, 45_500.0, 48_000.0]);
    }

    #[test]
    fn arm_summary() {
        let mk = |arm: &str, b: u64| Frame { device: String::new(), index: 0, arm: arm.into(), start: 0.0, end: 0.0, top_destination: None, upload_bytes: b, ..Frame::default() };
        let f: Vec<Frame> = [40_000, 42_000, 44_000, 46_000, 200_000].iter().map(|&b| mk("a", b)).collect();
        let s = &arm_stats(&f)[0];
        assert_eq!((s.n, s.kept), (5, 4));
        assert_eq!(s.mean, 43_000.0);
        assert_eq!(s.median, 43_000.0);
        assert!((s.sd - 2_581.988_897_471_611).abs() < 1e-6, "{}", s.sd);
    }

    #[test]
    fn welch_matches_a_textbook_example() {
        // scipy.stats.ttest_ind([19.1, 21.3, 20.5, 22.0, 18.7], [23.4, 24.1, 22.8, 25.0],
        // equal_var=False): statistic -4.4500686629692385, pvalue 0.003109083551491428.
        let w = welch(&[19.1, 21.3, 20.5, 22.0, 18.7], &[23.4, 24.1, 22.8, 25.0]).unwrap();
        assert!((w.t + 4.450_068_662_969_238).abs() < 1e-12 && (w.p - 0.003_109_083_551_491_428).abs() < 1e-12, "{w:?}");
        assert!((w.df - 6.871_933_947_839_963).abs() < 1e-9, "{w:?}");
        assert_eq!(welch(&[1.0], &[1.0, 2.0]), None);
        assert_eq!(welch(&[3.0, 3.0], &[3.0, 3.0]), None);
    }
}
