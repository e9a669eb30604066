//! The statistics of the eval report: percentile bootstrap intervals, a Bradley–Terry fit of
//! pairwise verdicts, and Spearman's rank correlation.

use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// A point estimate with its 95 % interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

/// The q-quantile (0 ≤ q ≤ 1) of `sorted`, interpolated linearly between order statistics
/// (Hyndman & Fan type 7, numpy's default).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let h = (n - 1) as f64 * q.clamp(0.0, 1.0);
            let (i, frac) = (h.floor() as usize, h - h.floor());
            if i + 1 < n {
                sorted[i] + frac * (sorted[i + 1] - sorted[i])
            } else {
                sorted[n - 1]
            }
        }
    }
}

pub fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// The seeded generator every resampling uses, so that a report is reproducible.
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// The 2.5 % and 97.5 % quantiles of `samples` (sorted here).
fn interval(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    (quantile(&samples, 0.025), quantile(&samples, 0.975))
}

/// The mean of `xs` with a 95 % percentile-bootstrap interval from `resamples` resamples.
/// None for an empty sample.
pub fn bootstrap_mean(xs: &[f64], resamples: usize, rng: &mut impl Rng) -> Option<Estimate> {
    if xs.is_empty() {
        return None;
    }
    let n = xs.len();
    let means: Vec<f64> = (0..resamples.max(1))
        .map(|_| (0..n).map(|_| xs[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    let (low, high) = interval(means);
    Some(Estimate {
        value: mean(xs),
        low,
        high,
    })
}

/// Pairwise verdicts: `wins[i][j]` is how often player i was preferred to player j.
pub type Wins = Vec<Vec<f64>>;

/// Bradley–Terry strengths θ (P(i beats j) = 1 / (1 + e^(θj − θi))), centred on mean 0,
/// fitted by maximum likelihood with Hunter's MM iteration. `prior` adds that many wins each
/// way to every pair that was compared, so that a player who never won (or never lost) still
/// gets a finite strength; 0 gives the plain maximum-likelihood fit. A player never compared
/// gets NaN.
pub fn bradley_terry(wins: &Wins, prior: f64) -> Vec<f64> {
    let n = wins.len();
    let w = |i: usize, j: usize| -> f64 {
        let games = wins[i][j] + wins[j][i];
        if games > 0.0 {
            wins[i][j] + prior
        } else {
            0.0
        }
    };
    let games = |i: usize, j: usize| w(i, j) + w(j, i);
    let played: Vec<bool> = (0..n)
        .map(|i| (0..n).any(|j| j != i && games(i, j) > 0.0))
        .collect();
    let mut p = vec![1.0f64; n];
    for _ in 0..100_000 {
        let mut next = p.clone();
        for i in (0..n).filter(|&i| played[i]) {
            let won: f64 = (0..n).filter(|&j| j != i).map(|j| w(i, j)).sum();
            let denom: f64 = (0..n)
                .filter(|&j| j != i && games(i, j) > 0.0)
                .map(|j| games(i, j) / (p[i] + p[j]))
                .sum();
            // A player who never won goes to 0; keep it tiny but positive so logs stay finite
            // for the others (its own strength is then −∞ in the limit, reported as such).
            next[i] = (won / denom).max(f64::MIN_POSITIVE);
        }
        // Scale: geometric mean 1 over the players who played.
        let k = played.iter().filter(|&&b| b).count().max(1) as f64;
        let log_mean: f64 = (0..n)
            .filter(|&i| played[i])
            .map(|i| next[i].ln())
            .sum::<f64>()
            / k;
        for (i, x) in next.iter_mut().enumerate() {
            if played[i] {
                *x /= log_mean.exp();
            }
        }
        let change = (0..n)
            .filter(|&i| played[i])
            .map(|i| (next[i].ln() - p[i].ln()).abs())
            .fold(0.0, f64::max);
        p = next;
        if change < 1e-12 {
            break;
        }
    }
    (0..n)
        .map(|i| if played[i] { p[i].ln() } else { f64::NAN })
        .collect()
}

/// Ranks (1 = largest) with ties given their average rank.
pub fn ranks_descending(xs: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..xs.len()).collect();
    order.sort_by(|&a, &b| xs[b].total_cmp(&xs[a]));
    let mut ranks = vec![0.0; xs.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && xs[order[j + 1]] == xs[order[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = avg;
        }
        i = j + 1;
    }
    ranks
}

/// Spearman's ρ: Pearson's correlation of the (tie-averaged) ranks. None with fewer than
/// two points or when either side is constant.
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() || a.len() < 2 {
        return None;
    }
    let (ra, rb) = (ranks_descending(a), ranks_descending(b));
    let (ma, mb) = (mean(&ra), mean(&rb));
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    (va > 0.0 && vb > 0.0).then(|| cov / (va * vb).sqrt())
}

/// A player's Bradley–Terry strength and rank with their bootstrap intervals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranked {
    pub strength: Estimate,
    /// 1 = best; the interval is of the rank over resamples.
    pub rank: usize,
    pub rank_low: f64,
    pub rank_high: f64,
}

/// Fits Bradley–Terry on all `groups` of verdicts (one group per prompt: (winner, loser)
/// pairs), then refits on `resamples` resamples of the groups for the intervals.
pub fn bradley_terry_bootstrap(
    players: usize,
    groups: &[Vec<(usize, usize)>],
    prior: f64,
    resamples: usize,
    rng: &mut impl Rng,
) -> Vec<Ranked> {
    let fit = |picked: &mut dyn Iterator<Item = &Vec<(usize, usize)>>| {
        let mut wins = vec![vec![0.0; players]; players];
        for g in picked {
            for &(a, b) in g {
                wins[a][b] += 1.0;
            }
        }
        bradley_terry(&wins, prior)
    };
    let full = fit(&mut groups.iter());
    let full_ranks = ranks_descending(&full.iter().map(|x| nan_low(*x)).collect::<Vec<_>>());
    let mut strengths = vec![Vec::new(); players];
    let mut ranks = vec![Vec::new(); players];
    if !groups.is_empty() {
        for _ in 0..resamples {
            let theta =
                fit(&mut (0..groups.len()).map(|_| &groups[rng.random_range(0..groups.len())]));
            let r = ranks_descending(&theta.iter().map(|x| nan_low(*x)).collect::<Vec<_>>());
            for i in 0..players {
                strengths[i].push(theta[i]);
                ranks[i].push(r[i]);
            }
        }
    }
    (0..players)
        .map(|i| {
            let (low, high) = interval(
                strengths[i]
                    .iter()
                    .copied()
                    .filter(|x| x.is_finite())
                    .collect(),
            );
            let (rank_low, rank_high) = interval(ranks[i].clone());
            Ranked {
                strength: Estimate {
                    value: full[i],
                    low,
                    high,
                },
                rank: full_ranks[i].round() as usize,
                rank_low,
                rank_high,
            }
        })
        .collect()
}

/// NaN (never compared) sorts last.
fn nan_low(x: f64) -> f64 {
    if x.is_nan() {
        f64::NEG_INFINITY
    } else {
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn quantiles_interpolate_like_numpy() {
        let xs = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&xs, 0.0), 1.0);
        assert_eq!(quantile(&xs, 1.0), 4.0);
        assert_eq!(quantile(&xs, 0.5), 2.5);
        // numpy.quantile([1,2,3,4], 0.025) = 1.075
        assert!(close(quantile(&xs, 0.025), 1.075, 1e-12));
        assert_eq!(quantile(&[7.0], 0.3), 7.0);
    }

    #[test]
    fn a_constant_sample_has_a_point_interval() {
        let e = bootstrap_mean(&[3.0; 12], 500, &mut rng(1)).unwrap();
        assert_eq!((e.value, e.low, e.high), (3.0, 3.0, 3.0));
        assert!(bootstrap_mean(&[], 10, &mut rng(1)).is_none());
    }

    #[test]
    fn bootstrap_of_two_values_covers_both() {
        // Resampled means of {0, 1}: 0 (1/4), 0.5 (1/2), 1 (1/4); the 2.5 % and 97.5 %
        // quantiles of 4000 of them are 0 and 1.
        let e = bootstrap_mean(&[0.0, 1.0], 4000, &mut rng(2)).unwrap();
        assert_eq!((e.value, e.low, e.high), (0.5, 0.0, 1.0));
    }

    #[test]
    fn bootstrap_interval_matches_the_exact_binomial_quantiles() {
        // 3 ones and 7 zeros: a resampled mean is Binomial(10, 0.3) / 10. Its CDF: P(≤0) =
        // 0.0282, P(≤4) = 0.8497, P(≤5) = 0.9527, P(≤6) = 0.9894. So the 2.5 % quantile is
        // 0.0 and the 97.5 % quantile is 0.6, away from the steps.
        let mut xs = vec![0.0; 7];
        xs.extend([1.0; 3]);
        let e = bootstrap_mean(&xs, 20_000, &mut rng(3)).unwrap();
        assert_eq!((e.value, e.low, e.high), (0.3, 0.0, 0.6));
        // Seeded: the same seed gives the same interval.
        assert_eq!(
            bootstrap_mean(&xs, 300, &mut rng(9)),
            bootstrap_mean(&xs, 300, &mut rng(9))
        );
    }

    #[test]
    fn bradley_terry_two_players() {
        // A beat B 3 times, B beat A once: the MLE odds are 3, so θA − θB = ln 3.
        let wins = vec![vec![0.0, 3.0], vec![1.0, 0.0]];
        let t = bradley_terry(&wins, 0.0);
        assert!(close(t[0] - t[1], 3f64.ln(), 1e-9), "{t:?}");
        assert!(close(t[0] + t[1], 0.0, 1e-12));
        // With half a win added each way: odds 3.5 / 1.5.
        let t = bradley_terry(&wins, 0.5);
        assert!(close(t[0] - t[1], (3.5f64 / 1.5).ln(), 1e-9), "{t:?}");
    }

    #[test]
    fn bradley_terry_recovers_strengths_1_2_4() {
        // Wins exactly as expected under p = (1, 2, 4): 1 vs 2 over 3 games: 1 : 2;
        // 1 vs 4 over 5 games: 1 : 4; 2 vs 4 over 3 games: 1 : 2. The likelihood equations
        // (wins = expected wins) hold at p, so the MLE is p itself: θ = ln p − mean(ln p).
        let wins = vec![
            vec![0.0, 1.0, 1.0],
            vec![2.0, 0.0, 1.0],
            vec![4.0, 2.0, 0.0],
        ];
        let t = bradley_terry(&wins, 0.0);
        let lnp = [0.0, 2f64.ln(), 4f64.ln()];
        let m = mean(&lnp);
        for i in 0..3 {
            assert!(close(t[i], lnp[i] - m, 1e-9), "{t:?}");
        }
    }

    #[test]
    fn a_player_never_compared_has_no_strength() {
        let wins = vec![
            vec![0.0, 2.0, 0.0],
            vec![2.0, 0.0, 0.0],
            vec![0.0, 0.0, 0.0],
        ];
        let t = bradley_terry(&wins, 0.5);
        assert!(close(t[0], 0.0, 1e-12) && close(t[1], 0.0, 1e-12));
        assert!(t[2].is_nan());
    }

    #[test]
    fn bootstrap_ranking_orders_a_clear_winner_first() {
        // Player 2 always beats 1, who always beats 0, on 20 prompts.
        let groups: Vec<Vec<(usize, usize)>> =
            (0..20).map(|_| vec![(2, 1), (1, 0), (2, 0)]).collect();
        let r = bradley_terry_bootstrap(3, &groups, 0.5, 200, &mut rng(4));
        assert_eq!(r.iter().map(|x| x.rank).collect::<Vec<_>>(), [3, 2, 1]);
        // Every resample is the same data: the intervals are points.
        assert_eq!((r[2].rank_low, r[2].rank_high), (1.0, 1.0));
        assert!(close(r[2].strength.low, r[2].strength.value, 1e-9));
    }

    #[test]
    fn spearman_by_hand() {
        // Ranks of a: 1 2 3 4 (descending 4,3,2,1); b: 2 1 4 3. d² = 1+1+1+1 = 4;
        // ρ = 1 − 6·4 / (4·15) = 0.6.
        let a = [4.0, 3.0, 2.0, 1.0];
        let b = [3.0, 4.0, 1.0, 2.0];
        assert!(close(spearman(&a, &b).unwrap(), 0.6, 1e-12));
        assert!(close(spearman(&a, &a).unwrap(), 1.0, 1e-12));
        let rev: Vec<f64> = a.iter().map(|x| -x).collect();
        assert!(close(spearman(&a, &rev).unwrap(), -1.0, 1e-12));
        // Ties: ranks 1.5 1.5 3 against 1 2 3: Pearson of (1.5,1.5,3) and (1,2,3) = √3/2.
        assert!(close(
            spearman(&[5.0, 5.0, 1.0], &[3.0, 2.0, 1.0]).unwrap(),
            3f64.sqrt() / 2.0,
            1e-12
        ));
        assert!(spearman(&[1.0, 1.0], &[1.0, 2.0]).is_none());
        assert!(spearman(&[1.0], &[1.0]).is_none());
    }

    #[test]
    fn ranks_average_ties() {
        assert_eq!(
            ranks_descending(&[1.0, 3.0, 3.0, 0.0]),
            [3.0, 1.5, 1.5, 4.0]
        );
    }
}
